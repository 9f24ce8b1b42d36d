//! Carving structured steps out of fuzz bytes without a dependency on `arbitrary`: every
//! byte string is a valid input, so libFuzzer's mutations never go to waste on a
//! decoder that refuses them.

/// Reads bytes, length-prefixed chunks and lines from the front of an input.
pub(crate) struct Input<'a> {
    rest: &'a [u8],
}

impl<'a> Input<'a> {
    pub(crate) fn new(data: &'a [u8]) -> Self {
        Self { rest: data }
    }

    /// The next byte, or `None` at the end.
    pub(crate) fn byte(&mut self) -> Option<u8> {
        let (&first, rest) = self.rest.split_first()?;
        self.rest = rest;
        Some(first)
    }

    /// A chunk whose length is given by the next byte; shorter if the input ends first.
    pub(crate) fn chunk(&mut self) -> &'a [u8] {
        let len = usize::from(self.byte().unwrap_or(0)).min(self.rest.len());
        let (chunk, rest) = self.rest.split_at(len);
        self.rest = rest;
        chunk
    }
}
