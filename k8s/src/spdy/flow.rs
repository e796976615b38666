//! SPDY/3.1 flow control (the spec's section 2.6.8): every stream and the session as a whole
//! have a send window, the bytes of DATA the sender may still send; the receiver grows it with
//! WINDOW_UPDATE as it consumes data. Windows start at 64 KiB; SETTINGS
//! INITIAL_WINDOW_SIZE changes the streams' (not the session's), also of open streams, by the
//! difference. A window may not exceed 2^31-1.
//!
//! kubectl and the kubelet (moby/spdystream) take no part: they never send WINDOW_UPDATE and
//! ignore it, relying on TCP. A session therefore only holds its sends to the peer's windows
//! once the peer has shown it keeps them ([`PeerFlow`]), and only treats data beyond its own
//! window as an error from such a peer.

/// The window every stream and the session start with.
pub const DEFAULT_WINDOW: u32 = 64 << 10;
/// The largest a window may grow.
pub const MAX_WINDOW: i64 = 0x7fff_ffff;

/// Why a window cannot change as asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FlowError {
    /// A WINDOW_UPDATE that would take the window past 2^31-1.
    #[error("a window update past 2^31-1 bytes")]
    Overflow,
    /// The peer sent more than the window allowed.
    #[error("{sent} bytes of data with {window} bytes of window left")]
    Exceeded {
        /// The bytes of the frame.
        sent: usize,
        /// The window before it.
        window: i64,
    },
}

/// A send window (the bytes this side may still send). Negative after the peer shrank the
/// initial window below what was in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SendWindow(i64);

impl SendWindow {
    /// A window of `initial` bytes.
    pub fn new(initial: u32) -> Self {
        Self(i64::from(initial))
    }

    /// The bytes that may be sent now.
    pub fn available(&self) -> usize {
        usize::try_from(self.0.max(0)).unwrap_or(usize::MAX)
    }

    /// Takes `n` sent bytes off.
    pub fn consume(&mut self, n: usize) {
        self.0 -= i64::try_from(n).unwrap_or(i64::MAX);
    }

    /// A WINDOW_UPDATE's delta.
    pub fn grow(&mut self, delta: u32) -> Result<(), FlowError> {
        let grown = self.0 + i64::from(delta);
        if grown > MAX_WINDOW {
            return Err(FlowError::Overflow);
        }
        self.0 = grown;
        Ok(())
    }

    /// A new INITIAL_WINDOW_SIZE: the window moves by the difference.
    pub fn rebase(&mut self, old_initial: u32, new_initial: u32) {
        self.0 += i64::from(new_initial) - i64::from(old_initial);
    }
}

/// A receive window: what the peer may still send, and what this side has consumed but not
/// yet returned with a WINDOW_UPDATE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecvWindow {
    size: u32,
    open: i64,
    unreturned: u32,
}

impl RecvWindow {
    /// A window of `size` bytes.
    pub fn new(size: u32) -> Self {
        Self {
            size,
            open: i64::from(size),
            unreturned: 0,
        }
    }

    /// `n` bytes arrived. An error when they overrun the window; the window still records
    /// them (a lenient caller goes on).
    pub fn received(&mut self, n: usize) -> Result<(), FlowError> {
        let before = self.open;
        self.open -= i64::try_from(n).unwrap_or(i64::MAX);
        if self.open < 0 {
            return Err(FlowError::Exceeded {
                sent: n,
                window: before,
            });
        }
        Ok(())
    }

    /// `n` bytes were handed on; the delta of a WINDOW_UPDATE to send when half the window
    /// waits to be returned (fewer, larger updates, as Chromium and Go's http2 do).
    pub fn consumed(&mut self, n: usize) -> Option<u32> {
        self.unreturned = self
            .unreturned
            .saturating_add(u32::try_from(n).unwrap_or(u32::MAX));
        if self.unreturned < self.size / 2 {
            return None;
        }
        let delta = self.unreturned.min(0x7fff_ffff);
        self.unreturned -= delta;
        self.open += i64::from(delta);
        Some(delta)
    }
}

/// Whether the peer keeps flow control: unknown until it sends a WINDOW_UPDATE or an
/// INITIAL_WINDOW_SIZE setting (spdystream does neither).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PeerFlow(bool);

impl PeerFlow {
    /// The peer has shown it keeps windows.
    pub fn seen(&mut self) {
        self.0 = true;
    }

    /// Whether sends wait for the peer's windows and overruns are errors.
    pub fn enforced(&self) -> bool {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_send_window_shrinks_with_sends_and_grows_with_updates() {
        let mut w = SendWindow::new(DEFAULT_WINDOW);
        assert_eq!(w.available(), 65536);
        w.consume(65536);
        assert_eq!(w.available(), 0);
        w.grow(100).unwrap();
        assert_eq!(w.available(), 100);
        // A smaller initial window can take it below zero; sends wait for updates.
        w.rebase(DEFAULT_WINDOW, 1024);
        assert_eq!(w.available(), 0);
        w.grow(64512).unwrap();
        assert_eq!(w.available(), 100);
        let mut full = SendWindow::new(0x7fff_ffff);
        assert_eq!(full.grow(1), Err(FlowError::Overflow));
        assert_eq!(full.available(), 0x7fff_ffff);
    }

    #[test]
    fn a_receive_window_returns_half_at_a_time_and_catches_overruns() {
        let mut w = RecvWindow::new(DEFAULT_WINDOW);
        w.received(30000).unwrap();
        assert_eq!(w.consumed(30000), None);
        w.received(5000).unwrap();
        assert_eq!(w.consumed(5000), Some(35000));
        // 35000 returned: 65536 - 0 open again.
        w.received(65536).unwrap();
        assert_eq!(
            w.received(1),
            Err(FlowError::Exceeded { sent: 1, window: 0 })
        );
        let mut p = PeerFlow::default();
        assert!(!p.enforced());
        p.seen();
        assert!(p.enforced());
    }
}
