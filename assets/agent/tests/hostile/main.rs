//! The host client against a hostile agent: a fake agent on a Unix socket (threads in this
//! test, speaking frames) sends garbage, huge lengths, stalls, endless output, early closes,
//! duplicate or misplaced EXIT frames, lying file sizes and short transfers, and never reads
//! stdin. Each case must end in a clear error, within its deadline, with bounded memory.
//!
//! Host-only and fast: the client's deadlines are set to a few hundred milliseconds here.

mod closes;
mod counting;
mod exit_frames;
mod fake;
mod files;
mod garbage;
mod output;
mod reuse;
mod stalls;
mod stdin;
mod terminal;
