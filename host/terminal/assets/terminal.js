// The web terminal: xterm.js in the page, a WebSocket to the host, a PTY in the workload.
// Protocol (see host/terminal/src/protocol.rs): binary messages carry terminal bytes both
// ways; text messages carry JSON control: {"type":"resize","cols","rows"} from here,
// {"type":"started"}, {"type":"exit","status"|"signal"} and {"type":"closed","reason"}
// from the host. Every connection is a new session; a reload starts a new one.
"use strict";
(() => {
  const statusEl = document.getElementById("status");
  const button = document.getElementById("reconnect");
  document.getElementById("where").textContent = `Terminal · ${location.host}`;
  document.title = `Terminal · ${location.host}`;

  const term = new Terminal({ cursorBlink: true, scrollback: 5000 });
  const fit = new FitAddon.FitAddon();
  term.loadAddon(fit);
  term.open(document.getElementById("terminal"));
  fit.fit();
  term.focus();

  const encoder = new TextEncoder();
  let socket = null;

  function status(text, state) {
    statusEl.textContent = text;
    statusEl.dataset.state = state;
  }

  function notice(text) {
    term.write(`\r\n\x1b[7m ${text} \x1b[0m\r\n`);
  }

  function send(data) {
    if (socket && socket.readyState === WebSocket.OPEN) socket.send(data);
  }

  function connect() {
    const url = new URL(location.href);
    url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
    url.search = `?cols=${term.cols}&rows=${term.rows}`;
    url.hash = "";
    const ws = new WebSocket(url);
    ws.binaryType = "arraybuffer";
    socket = ws;
    let opened = false;
    let ended = false;
    status("connecting…", "connecting");
    ws.onopen = () => {
      opened = true;
    };
    ws.onmessage = (event) => {
      if (typeof event.data !== "string") {
        term.write(new Uint8Array(event.data));
        return;
      }
      const message = JSON.parse(event.data);
      if (message.type === "started") {
        status("connected", "connected");
      } else if (message.type === "exit") {
        ended = true;
        const how = message.signal ? `killed by signal ${message.signal}` : `exit status ${message.status}`;
        status(`session ended (${how})`, "ended");
        notice(`session ended (${how})`);
        // Offered with the news, not only once the socket has closed after it.
        button.hidden = false;
      } else if (message.type === "closed") {
        ended = true;
        status(`session closed: ${message.reason}`, "closed");
        notice(`session closed: ${message.reason}`);
        button.hidden = false;
      }
    };
    ws.onclose = (event) => {
      if (socket !== ws) return;
      if (!opened) {
        // A refused handshake hides its HTTP status from scripts: say what is likely.
        status("could not start a session (the workload may be offline)", "failed");
        notice("could not start a session: the workload may be offline or you may lack access");
      } else if (!ended) {
        const why = event.reason ? `: ${event.reason}` : "";
        status(`connection lost${why}`, "lost");
        notice(`connection lost${why}`);
      }
      button.hidden = false;
    };
  }

  term.onData((data) => send(encoder.encode(data)));
  // Mouse reports in some modes are binary strings (one byte per char).
  term.onBinary((data) => send(Uint8Array.from(data, (c) => c.charCodeAt(0) & 0xff)));
  term.onResize(({ cols, rows }) => send(JSON.stringify({ type: "resize", cols, rows })));
  window.addEventListener("resize", () => fit.fit());
  button.addEventListener("click", () => {
    button.hidden = true;
    term.reset();
    connect();
    term.focus();
  });

  // For tests and debugging from the console: the screen's text and the status.
  window.burrowTerminal = {
    text() {
      const buffer = term.buffer.active;
      const lines = [];
      for (let i = 0; i < buffer.length; i++) lines.push(buffer.getLine(i).translateToString(true));
      return lines.join("\n");
    },
    state: () => statusEl.dataset.state,
    status: () => statusEl.textContent,
    size: () => ({ cols: term.cols, rows: term.rows }),
  };

  connect();
})();
