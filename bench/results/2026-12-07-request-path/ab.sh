#!/bin/bash
# ab.sh VARIANT CONNS SECONDS -> prints req/s, host cpu us/req, agent cpu us/req
V=$1; C=$2; D=${3:-5}; CFG=${4:-host.toml}
cd /work/prof
pkill -f "host-(old|new|[a-z0-9]+) run --config" ; pkill -f "agent-(old|new|[a-z0-9]+) --host"; sleep 0.5
./host-$V run --config $CFG > host-$V.log 2>&1 &
HP=$!
sleep 0.3
BURROW_AGENT_TOKEN=change-me ./agent-$V --host grpc://127.0.0.1:18181 --service web=127.0.0.1:18080 > agent-$V.log 2>&1 &
AP=$!
for i in $(seq 1 100); do c=$(curl -s -o /dev/null -w '%{http_code}' -H 'Host: web-demo.localhost' http://127.0.0.1:18180/hello); [ "$c" = 200 ] && break; sleep 0.1; done
wrk -t2 -c$C -d2s -H 'Host: web-demo.localhost' http://127.0.0.1:18180/hello > /dev/null
cpu() { awk '{print $14+$15}' /proc/$1/stat; }
h0=$(cpu $HP); a0=$(cpu $AP)
out=$(wrk -t2 -c$C -d${D}s -H 'Host: web-demo.localhost' http://127.0.0.1:18180/hello)
h1=$(cpu $HP); a1=$(cpu $AP)
reqs=$(echo "$out" | awk '/requests in/ {print $1}')
rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
echo "$V c=$C rps=$rps host_us=$(awk -v a=$h0 -v b=$h1 -v r=$reqs "BEGIN{printf \"%.1f\", (b-a)*10000/r}") agent_us=$(awk -v a=$a0 -v b=$a1 -v r=$reqs "BEGIN{printf \"%.1f\", (b-a)*10000/r}")"
kill $HP $AP
