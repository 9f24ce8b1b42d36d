//! The gRPC codec of the tunnel and replica services: prost, with small initial buffers.
//!
//! tonic gives every stream an encode and a decode buffer of 8 KiB up front. A connected
//! agent holds its parked tunnels open as streams (8 per agent at the defaults, on two
//! connections), so those buffers were most of the host's memory per idle agent
//! (BENCHMARKS.md, "Agents at scale"). Starting at [`INITIAL_BUFFER`] instead, a parked
//! stream holds 2 × 1 KiB; a stream carrying data grows its buffers to the messages it
//! sees (data frames are at most [`crate::MAX_DATA_FRAME`]), as it did before.

use std::marker::PhantomData;

use tonic::codec::{BufferSettings, Codec};
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

/// Initial size of a stream's encode and decode buffers: a control message or an HTTP
/// request head fits; larger messages grow the buffer.
pub const INITIAL_BUFFER: usize = 1024;

/// How much a stream encodes before yielding to the runtime (tonic's default).
const YIELD_THRESHOLD: usize = 32 * 1024;

/// [`ProstCodec`] with [`INITIAL_BUFFER`]-sized buffers (generated code names it through
/// `codec_path`, see build.rs).
#[derive(Debug, Clone, Copy)]
pub struct SmallBufferCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for SmallBufferCodec<T, U> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<T, U> Codec for SmallBufferCodec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<T, U>::raw_encoder(BufferSettings::new(INITIAL_BUFFER, YIELD_THRESHOLD))
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstCodec::<T, U>::raw_decoder(BufferSettings::new(INITIAL_BUFFER, YIELD_THRESHOLD))
    }
}
