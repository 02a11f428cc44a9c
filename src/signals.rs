//! The process signals the long-running commands answer: SIGTERM and SIGINT stop them
//! gracefully, SIGHUP reloads the local configuration.
//!
//! The signals are blocked in every thread and taken synchronously with `sigwait(2)` by the
//! thread that waits for them, so no handler runs at an arbitrary point of a core's loop.

/// A signal the process was sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    /// SIGTERM or SIGINT: drain and stop.
    Stop,
    /// SIGHUP: reload the configuration file.
    Reload,
}

/// The signals blocked by [`Signals::block`], to be waited for.
pub struct Signals {
    set: libc::sigset_t,
}

impl Signals {
    /// Blocks SIGTERM, SIGINT and SIGHUP in the calling thread, and so in every thread it
    /// starts afterwards: call it before starting any.
    pub fn block() -> std::io::Result<Signals> {
        // SAFETY: an all-zero sigset_t is a valid value for sigemptyset to initialise.
        let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
        // SAFETY: sigemptyset/sigaddset write into the sigset_t we own.
        unsafe {
            libc::sigemptyset(&mut set);
            for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
                libc::sigaddset(&mut set, sig);
            }
        }
        // SAFETY: pthread_sigmask with a valid set and no old set wanted.
        let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
        if rc != 0 {
            return Err(std::io::Error::from_raw_os_error(rc));
        }
        Ok(Signals { set })
    }

    /// Waits for the next of the blocked signals.
    pub fn wait(&self) -> Signal {
        loop {
            let mut sig: libc::c_int = 0;
            // SAFETY: sigwait reads the set we own and writes the signal number to `sig`.
            let rc = unsafe { libc::sigwait(&self.set, &mut sig) };
            match (rc, sig) {
                (0, libc::SIGHUP) => return Signal::Reload,
                (0, libc::SIGTERM | libc::SIGINT) => return Signal::Stop,
                _ => continue,
            }
        }
    }
}
