//! SFTP metadata from the relayed packets: which files were read or
//! written (and how many bytes), removed, renamed or created. Contents are
//! never kept. A packet the tracker cannot frame stops the tracking (the
//! relay goes on; the transfer list then ends with an `untracked` entry).

use std::collections::HashMap;

/// Larger packets are not SFTP as OpenSSH speaks it (256 KiB limit).
const MAX_PACKET: usize = 512 * 1024;
/// Bound on open handles and outstanding requests tracked.
const MAX_TRACKED: usize = 4096;

const FXP_OPEN: u8 = 3;
const FXP_CLOSE: u8 = 4;
const FXP_READ: u8 = 5;
const FXP_WRITE: u8 = 6;
const FXP_REMOVE: u8 = 13;
const FXP_MKDIR: u8 = 14;
const FXP_RMDIR: u8 = 15;
const FXP_RENAME: u8 = 18;
const FXP_HANDLE: u8 = 102;
const FXP_DATA: u8 = 103;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Transfer {
    pub path: String,
    /// `upload`, `download`, `remove`, `rename`, `mkdir`, `rmdir`, `untracked`.
    pub direction: &'static str,
    pub bytes: u64,
}

/// Splits a byte stream into SFTP packets, keeping only each packet's head:
/// file contents (WRITE and DATA payloads) are skipped, not copied.
#[derive(Default)]
struct Framer {
    /// The current packet's length prefix and head.
    buf: Vec<u8>,
    /// Payload bytes of the current packet still to pass over.
    skip: usize,
    broken: bool,
}

/// Head kept of WRITE and DATA packets (type, id, handle, offset, length).
const DATA_HEAD: usize = 512;
/// Head kept of other packets (paths).
const OTHER_HEAD: usize = 16 * 1024;

impl Framer {
    /// Calls `each(packet length, packet head)` for every packet completed.
    fn push(&mut self, mut data: &[u8], mut each: impl FnMut(usize, &[u8])) {
        while !self.broken {
            if self.skip > 0 {
                let n = self.skip.min(data.len());
                self.skip -= n;
                data = &data[n..];
                if self.skip > 0 {
                    return;
                }
            }
            if data.is_empty() {
                return;
            }
            // Length prefix and type byte first.
            let take = 5usize.saturating_sub(self.buf.len()).min(data.len());
            self.buf.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.buf.len() < 5 {
                return;
            }
            let len =
                u32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]) as usize;
            if len == 0 || len > MAX_PACKET {
                self.broken = true;
                self.buf.clear();
                return;
            }
            let head = len.min(if matches!(self.buf[4], FXP_WRITE | FXP_DATA) {
                DATA_HEAD
            } else {
                OTHER_HEAD
            });
            let take = (4 + head - self.buf.len()).min(data.len());
            self.buf.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.buf.len() < 4 + head {
                return;
            }
            each(len, &self.buf[4..]);
            self.buf.clear();
            self.skip = len - head;
        }
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn u8(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }
    fn u32(&mut self) -> Option<u32> {
        if self.0.len() < 4 {
            return None;
        }
        let v = u32::from_be_bytes([self.0[0], self.0[1], self.0[2], self.0[3]]);
        self.0 = &self.0[4..];
        Some(v)
    }
    fn bytes(&mut self) -> Option<&'a [u8]> {
        let n = self.u32()? as usize;
        if self.0.len() < n {
            return None;
        }
        let (v, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(v)
    }
    fn string(&mut self) -> Option<String> {
        self.bytes()
            .map(|b| String::from_utf8_lossy(b).into_owned())
    }
}

#[derive(Default)]
struct OpenFile {
    path: String,
    read: u64,
    written: u64,
}

#[derive(Default)]
pub(crate) struct SftpTracker {
    requests: Framer,
    responses: Framer,
    /// OPEN request id → path.
    opening: HashMap<u32, String>,
    /// handle → file.
    files: HashMap<Vec<u8>, OpenFile>,
    /// READ request id → handle.
    reading: HashMap<u32, Vec<u8>>,
    done: Vec<Transfer>,
}

impl SftpTracker {
    /// Bytes from the client (requests).
    pub fn client_data(&mut self, data: &[u8]) {
        let mut framer = std::mem::take(&mut self.requests);
        framer.push(data, |_, head| self.request(head));
        self.requests = framer;
    }

    /// Bytes from the server (responses).
    pub fn server_data(&mut self, data: &[u8]) {
        let mut framer = std::mem::take(&mut self.responses);
        framer.push(data, |len, head| self.response(len, head));
        self.responses = framer;
    }

    fn request(&mut self, p: &[u8]) {
        let mut r = Reader(p);
        let Some(kind) = r.u8() else { return };
        let Some(id) = r.u32() else { return };
        match kind {
            FXP_OPEN => {
                if let Some(path) = r.string() {
                    if self.opening.len() < MAX_TRACKED {
                        self.opening.insert(id, path);
                    }
                }
            }
            FXP_READ => {
                if let Some(h) = r.bytes() {
                    if self.reading.len() < MAX_TRACKED {
                        self.reading.insert(id, h.to_vec());
                    }
                }
            }
            FXP_WRITE => {
                if let (Some(h), Some(_offset_hi), Some(_offset_lo), Some(n)) =
                    (r.bytes().map(<[u8]>::to_vec), r.u32(), r.u32(), r.u32())
                {
                    if let Some(f) = self.files.get_mut(&h) {
                        f.written += n as u64;
                    }
                }
            }
            FXP_CLOSE => {
                if let Some(h) = r.bytes() {
                    if let Some(f) = self.files.remove(h) {
                        self.close(f);
                    }
                }
            }
            FXP_REMOVE | FXP_MKDIR | FXP_RMDIR => {
                if let Some(path) = r.string() {
                    let direction = match kind {
                        FXP_REMOVE => "remove",
                        FXP_MKDIR => "mkdir",
                        _ => "rmdir",
                    };
                    self.done.push(Transfer {
                        path,
                        direction,
                        bytes: 0,
                    });
                }
            }
            FXP_RENAME => {
                if let (Some(from), Some(to)) = (r.string(), r.string()) {
                    self.done.push(Transfer {
                        path: format!("{from} -> {to}"),
                        direction: "rename",
                        bytes: 0,
                    });
                }
            }
            _ => {}
        }
    }

    fn response(&mut self, len: usize, p: &[u8]) {
        let mut r = Reader(p);
        let Some(kind) = r.u8() else { return };
        let Some(id) = r.u32() else { return };
        match kind {
            FXP_HANDLE => {
                if let (Some(path), Some(h)) = (self.opening.remove(&id), r.bytes()) {
                    if self.files.len() < MAX_TRACKED {
                        self.files.insert(
                            h.to_vec(),
                            OpenFile {
                                path,
                                ..OpenFile::default()
                            },
                        );
                    }
                }
            }
            FXP_DATA => {
                if let Some(h) = self.reading.remove(&id) {
                    if let Some(f) = self.files.get_mut(&h) {
                        // type + id + length prefix of the data string.
                        f.read += len.saturating_sub(9) as u64;
                    }
                }
            }
            _ => {
                self.opening.remove(&id);
                self.reading.remove(&id);
            }
        }
    }

    fn close(&mut self, f: OpenFile) {
        if f.written > 0 || f.read == 0 {
            self.done.push(Transfer {
                path: f.path.clone(),
                direction: "upload",
                bytes: f.written,
            });
        }
        if f.read > 0 {
            self.done.push(Transfer {
                path: f.path,
                direction: "download",
                bytes: f.read,
            });
        }
    }

    /// Everything seen, including files still open when the channel ended.
    pub fn finish(&mut self) -> Vec<Transfer> {
        let open: Vec<OpenFile> = self.files.drain().map(|(_, f)| f).collect();
        for f in open {
            self.close(f);
        }
        if self.requests.broken || self.responses.broken {
            self.done.push(Transfer {
                path: "(stream not parseable as SFTP; later transfers untracked)".into(),
                direction: "untracked",
                bytes: 0,
            });
        }
        std::mem::take(&mut self.done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(kind: u8, id: u32, body: &[&[u8]]) -> Vec<u8> {
        let mut p = vec![kind];
        p.extend_from_slice(&id.to_be_bytes());
        for b in body {
            p.extend_from_slice(b);
        }
        let mut out = (p.len() as u32).to_be_bytes().to_vec();
        out.extend(p);
        out
    }

    fn string(s: &[u8]) -> Vec<u8> {
        let mut v = (s.len() as u32).to_be_bytes().to_vec();
        v.extend_from_slice(s);
        v
    }

    #[test]
    fn upload_and_download_split_across_chunks() {
        let mut t = SftpTracker::default();
        let open = packet(
            FXP_OPEN,
            1,
            &[&string(b"/tmp/up"), &[0, 0, 0, 0x1a], &[0; 4]],
        );
        let write = packet(
            FXP_WRITE,
            2,
            &[&string(b"H1"), &[0; 8], &string(&[7u8; 1000])],
        );
        let close = packet(FXP_CLOSE, 3, &[&string(b"H1")]);
        let mut all = open.clone();
        all.extend(&write);
        all.extend(&close);
        t.server_data(&packet(FXP_HANDLE, 1, &[&string(b"H1")]));
        // The HANDLE reply must follow the OPEN; feed OPEN first in pieces.
        let mut t = SftpTracker::default();
        for c in open.chunks(3) {
            t.client_data(c);
        }
        t.server_data(&packet(FXP_HANDLE, 1, &[&string(b"H1")]));
        for c in write.chunks(7).chain(close.chunks(5)) {
            t.client_data(c);
        }
        // A download.
        t.client_data(&packet(
            FXP_OPEN,
            4,
            &[&string(b"/tmp/down"), &[0, 0, 0, 1], &[0; 4]],
        ));
        t.server_data(&packet(FXP_HANDLE, 4, &[&string(b"H2")]));
        t.client_data(&packet(
            FXP_READ,
            5,
            &[&string(b"H2"), &[0; 8], &[0, 0, 0x80, 0]],
        ));
        let data = packet(FXP_DATA, 5, &[&string(&[1u8; 500])]);
        for c in data.chunks(100) {
            t.server_data(c);
        }
        t.client_data(&packet(FXP_REMOVE, 6, &[&string(b"/tmp/gone")]));
        let done = t.finish();
        assert!(done.contains(&Transfer {
            path: "/tmp/up".into(),
            direction: "upload",
            bytes: 1000
        }));
        assert!(done.contains(&Transfer {
            path: "/tmp/down".into(),
            direction: "download",
            bytes: 500
        }));
        assert!(done.iter().any(|t| t.direction == "remove"));
    }

    #[test]
    fn garbage_stops_tracking_without_panicking() {
        let mut t = SftpTracker::default();
        t.client_data(&[0xff; 64]);
        t.server_data(&[0, 0, 0, 1, 0xff]);
        let done = t.finish();
        assert_eq!(done.last().unwrap().direction, "untracked");
    }
}
