//! Host tests: the real `supermachine-agent` binary in `--listen unix:` (and `--exec-stdio`,
//! `--tcp-stdio`) mode, driven through the public client and through raw frames. Same code path
//! as in a guest apart from the socket type.//!
//! One module per topic; [`harness`] holds the running agent and the raw-frame helpers.

mod control;
mod exec;
mod harness;
mod modes;
mod wire;
