//! The terminal of `rpcbind-proxy top`: keys read one at a time without
//! echo (termios), restored however the view ends.
#![allow(unsafe_code)]

use std::io;
use std::time::Duration;

/// Standard input in "one key at a time, no echo" mode until dropped.
/// Ctrl-C arrives as a key (ISIG off), so the view can restore the terminal
/// before it exits instead of being killed in raw mode.
#[derive(Debug)]
pub struct RawKeys {
    saved: libc::termios,
}

impl RawKeys {
    /// Switches standard input; fails when it is not a terminal.
    pub fn enable() -> io::Result<RawKeys> {
        // SAFETY: a zeroed termios is a valid value to be overwritten by
        // tcgetattr.
        let mut saved: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: `saved` is a valid, writable termios; fd 0 is ours.
        if unsafe { libc::tcgetattr(libc::STDIN_FILENO, &mut saved) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let mut raw = saved;
        raw.c_lflag &= !(libc::ICANON | libc::ECHO | libc::ISIG);
        raw.c_cc[libc::VMIN] = 1;
        raw.c_cc[libc::VTIME] = 0;
        // SAFETY: `raw` is a valid termios derived from the current one.
        if unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &raw) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(RawKeys { saved })
    }

    /// The next key pressed within `wait`, if any.
    pub fn key(&self, wait: Duration) -> io::Result<Option<u8>> {
        let mut pfd = libc::pollfd {
            fd: libc::STDIN_FILENO,
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = libc::c_int::try_from(wait.as_millis()).unwrap_or(libc::c_int::MAX);
        // SAFETY: one valid pollfd, count 1.
        let n = unsafe { libc::poll(&mut pfd, 1, ms) };
        if n < 0 {
            let e = io::Error::last_os_error();
            return if e.kind() == io::ErrorKind::Interrupted {
                Ok(None)
            } else {
                Err(e)
            };
        }
        if n == 0 {
            return Ok(None);
        }
        let mut b = 0u8;
        // SAFETY: reads at most one byte into `b`.
        let r = unsafe { libc::read(libc::STDIN_FILENO, (&mut b as *mut u8).cast(), 1) };
        match r {
            1 => Ok(Some(b)),
            // End of input: as good as a request to quit.
            0 => Ok(Some(b'q')),
            _ => Err(io::Error::last_os_error()),
        }
    }
}

impl Drop for RawKeys {
    fn drop(&mut self) {
        // SAFETY: restores the termios read in `enable`.
        unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &self.saved) };
    }
}
