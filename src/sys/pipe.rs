//! `SIGPIPE` for the operator's commands. Rust starts every program with `SIGPIPE` ignored, so
//! `pushbox events tail | head` would get `EPIPE` on its next `println!` and panic ("failed
//! printing to stdout: Broken pipe"). The commands that print for a person restore the default
//! action and end quietly when the reader goes away, like every other Unix tool. The server keeps
//! `SIGPIPE` ignored: a client that goes away must be an error on that connection, never the end
//! of the process (sockets are written with `MSG_NOSIGNAL` anyway).

use nix::sys::signal::{signal, SigHandler, Signal};

/// Restores the default `SIGPIPE` action (end the process) for a command writing to a pipe.
/// Call it before any thread is spawned. An error leaves the default Rust behaviour in place.
pub fn die_quietly_on_closed_stdout() {
    // SAFETY: `SigDfl` installs no handler of ours, so there is no async-signal-safety
    // requirement; called from `main` before any other thread exists.
    let _ = unsafe { signal(Signal::SIGPIPE, SigHandler::SigDfl) };
}
