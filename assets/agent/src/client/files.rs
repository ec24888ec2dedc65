//! File transfers: [`Client::write_file`] and [`Client::read_file`], in `FILE_CHUNK` pieces,
//! checking that what the guest sends adds up.

use std::time::{SystemTime, UNIX_EPOCH};

use super::{Client, Error, Result};
use crate::base64;
use crate::protocol::*;

impl Client {
    /// Writes `data` to `path` in the guest atomically, with permission bits `mode`: one
    /// `write_file` up to [`FILE_CHUNK`] bytes, `write_file_chunk` pieces above.
    pub fn write_file(&self, path: &str, mode: u32, data: &[u8]) -> Result<()> {
        if data.len() as u64 <= FILE_CHUNK {
            return self
                .control::<Empty>(&Control::WriteFile {
                    path: path.into(),
                    data_b64: base64::encode(data),
                    mode: Some(mode),
                })
                .map(drop);
        }
        let token = format!(
            "{}-{}",
            std::process::id(),
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos())
        );
        let pieces: Vec<&[u8]> = data.chunks(FILE_CHUNK as usize).collect();
        let mut offset = 0u64;
        for (i, piece) in pieces.iter().enumerate() {
            let last = i + 1 == pieces.len();
            self.control::<Empty>(&Control::WriteFileChunk {
                path: path.into(),
                offset,
                data_b64: base64::encode(piece),
                last,
                token: token.clone(),
                mode: last.then_some(mode),
            })?;
            offset += piece.len() as u64;
        }
        Ok(())
    }

    /// Reads `path` from the guest in `read_file_chunk` pieces; files above `max_size` bytes
    /// are refused (by the agent, and again here).
    ///
    /// Memory grows only with the bytes that arrived: neither the size the agent claims nor
    /// `max_size` (`u64::MAX` is fine) is allocated up front. The transfer must add up: the
    /// file's length may not change between chunks, no chunk may be larger than asked or run
    /// past that length, and a chunk shorter than [`FILE_CHUNK`] before the end is a short
    /// transfer (our agent sends whole chunks).
    /// All are [`Error::Protocol`].
    pub fn read_file(&self, path: &str, max_size: u64) -> Result<Vec<u8>> {
        let mut data: Vec<u8> = Vec::new();
        let mut total: Option<u64> = None;
        loop {
            let offset = data.len() as u64;
            let c: FileChunk = self.control(&Control::ReadFileChunk {
                path: path.into(),
                offset,
                len: FILE_CHUNK,
                max_bytes: max_size,
            })?;
            match total {
                None if c.total_len > max_size => {
                    return Err(Error::Protocol(format!(
                        "{path}: the agent reports {} bytes, above max_size {max_size}",
                        c.total_len
                    )))
                }
                None => total = Some(c.total_len),
                Some(t) if t != c.total_len => {
                    return Err(Error::Protocol(format!(
                        "{path}: the file's length changed from {t} to {} bytes during the \
                         transfer (at offset {offset})",
                        c.total_len
                    )))
                }
                Some(_) => {}
            }
            let total = c.total_len;
            let piece = base64::decode(&c.data_b64)
                .map_err(|e| Error::Protocol(format!("read_file_chunk {path}: {e}")))?;
            let n = piece.len() as u64;
            if n > FILE_CHUNK {
                return Err(Error::Protocol(format!(
                    "{path}: a chunk of {n} bytes at offset {offset}, above the {FILE_CHUNK} asked"
                )));
            }
            if offset + n > total {
                return Err(Error::Protocol(format!(
                    "{path}: {n} bytes at offset {offset} run past the file's {total} bytes"
                )));
            }
            // Our agent sends whole chunks until the end. A short one before it would let a
            // lying agent stretch a claimed 2^62 bytes into endless 1-byte round trips (issue
            // 22); refusing it bounds the transfer by total / FILE_CHUNK round trips.
            if n < FILE_CHUNK && offset + n < total {
                return Err(Error::Protocol(format!(
                    "{path}: short transfer: {} of {total} bytes, then a chunk of {n} bytes \
                     at offset {offset} where a whole one was due",
                    offset + n
                )));
            }
            data.extend_from_slice(&piece);
            if data.len() as u64 == total {
                return Ok(data);
            }
        }
    }
}
