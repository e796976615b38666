//! SPDY/3 header blocks (the spec's section 2.6.10): a count of name/value pairs, each name
//! and value prefixed by its 32-bit length, compressed with zlib. Each direction of a session
//! is one zlib stream that starts from the SPDY dictionary ([`super::dictionary`]) and is
//! flushed (`Z_SYNC_FLUSH`) after every block, so a block is only readable in order, by the
//! same [`Inflater`] that read the blocks before it.
//!
//! Reading is bounded ([`Limits`]): the inflated size (a small compressed block can inflate to
//! megabytes), the number of pairs and the size of each name and value are checked before
//! anything is kept.

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress};

use super::{dictionary, FrameError, Limits};

/// A block's name/value pairs in order. Names are lowercase; a value holding several values
/// separates them with NUL, as the spec says.
pub type Headers = Vec<(String, String)>;

/// The value of `name` in `headers`, if there is one.
pub fn get<'a>(headers: &'a Headers, name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

/// The compressing side: one per direction of a session.
pub struct Deflater {
    zlib: Compress,
}

impl Default for Deflater {
    fn default() -> Self {
        Self::new()
    }
}

impl Deflater {
    /// A zlib stream primed with the SPDY dictionary.
    pub fn new() -> Self {
        let mut zlib = Compress::new(Compression::default(), true);
        // Only fails on a stream that has already started.
        let _ = zlib.set_dictionary(dictionary::dictionary());
        Self { zlib }
    }

    /// `headers` as a compressed block. Names are lowercased (SPDY forbids uppercase).
    pub fn deflate(&mut self, headers: &Headers) -> Result<Vec<u8>, FrameError> {
        let raw = serialize(headers)?;
        let mut out = Vec::with_capacity(raw.len() / 2 + 64);
        let start = self.zlib.total_in();
        loop {
            if out.capacity() - out.len() < 64 {
                out.reserve(256);
            }
            let consumed = (self.zlib.total_in() - start) as usize;
            self.zlib
                .compress_vec(&raw[consumed..], &mut out, FlushCompress::Sync)
                .map_err(|e| FrameError::Compression(e.to_string()))?;
            let consumed = (self.zlib.total_in() - start) as usize;
            // The flush is complete once all input is in and zlib left room in the output.
            if consumed == raw.len() && out.len() < out.capacity() {
                return Ok(out);
            }
        }
    }
}

fn serialize(headers: &Headers) -> Result<Vec<u8>, FrameError> {
    let too_long = |_| FrameError::HeaderTooLarge;
    let mut raw = Vec::new();
    raw.extend_from_slice(
        &u32::try_from(headers.len())
            .map_err(too_long)?
            .to_be_bytes(),
    );
    for (name, value) in headers {
        let name = name.to_ascii_lowercase();
        raw.extend_from_slice(&u32::try_from(name.len()).map_err(too_long)?.to_be_bytes());
        raw.extend_from_slice(name.as_bytes());
        raw.extend_from_slice(&u32::try_from(value.len()).map_err(too_long)?.to_be_bytes());
        raw.extend_from_slice(value.as_bytes());
    }
    Ok(raw)
}

/// The decompressing side: one per direction of a session.
pub struct Inflater {
    zlib: Decompress,
    limits: Limits,
}

impl Inflater {
    /// A zlib stream that supplies the SPDY dictionary when the peer's stream asks for it.
    pub fn new(limits: Limits) -> Self {
        Self {
            zlib: Decompress::new(true),
            limits,
        }
    }

    /// The pairs of one compressed block.
    pub fn inflate(&mut self, block: &[u8]) -> Result<Headers, FrameError> {
        let raw = self.inflate_raw(block)?;
        parse(&raw, &self.limits)
    }

    fn inflate_raw(&mut self, block: &[u8]) -> Result<Vec<u8>, FrameError> {
        let max = self.limits.max_header_block;
        let mut out = Vec::with_capacity(block.len().saturating_mul(4).clamp(256, max));
        let start = self.zlib.total_in();
        loop {
            if out.len() == out.capacity() {
                if out.len() >= max {
                    return Err(FrameError::HeaderBlockTooLarge { max });
                }
                out.reserve_exact((out.len().max(1024)).min(max - out.len()));
            }
            let (in_before, out_before) = (self.zlib.total_in(), out.len());
            let consumed = (in_before - start) as usize;
            match self
                .zlib
                .decompress_vec(&block[consumed..], &mut out, FlushDecompress::Sync)
            {
                Ok(_) => {}
                Err(e) => match e.needs_dictionary() {
                    Some(id) if id == dictionary::ADLER32 => {
                        self.zlib
                            .set_dictionary(dictionary::dictionary())
                            .map_err(|e| FrameError::Compression(e.to_string()))?;
                        continue;
                    }
                    Some(id) => {
                        return Err(FrameError::Compression(format!(
                            "the header block needs dictionary {id:#x}, not SPDY/3's"
                        )))
                    }
                    None => return Err(FrameError::Compression(e.to_string())),
                },
            }
            let consumed = (self.zlib.total_in() - start) as usize;
            let progressed = self.zlib.total_in() != in_before || out.len() != out_before;
            if consumed == block.len() && out.len() < out.capacity() {
                return Ok(out);
            }
            if !progressed {
                if consumed == block.len() {
                    return Ok(out);
                }
                return Err(FrameError::Compression(
                    "the header block's zlib data does not progress".into(),
                ));
            }
        }
    }
}

/// Reads a big-endian u32 at `*at`, moving past it.
fn read_u32(raw: &[u8], at: &mut usize) -> Result<u32, FrameError> {
    let bytes = raw
        .get(*at..*at + 4)
        .ok_or(FrameError::MalformedHeaderBlock("truncated"))?;
    *at += 4;
    Ok(u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
}

fn read_str<'a>(raw: &'a [u8], at: &mut usize, limits: &Limits) -> Result<&'a str, FrameError> {
    let len = read_u32(raw, at)? as usize;
    if len > limits.max_header_field {
        return Err(FrameError::HeaderTooLarge);
    }
    let bytes = raw
        .get(*at..*at + len)
        .ok_or(FrameError::MalformedHeaderBlock("truncated"))?;
    *at += len;
    std::str::from_utf8(bytes).map_err(|_| FrameError::MalformedHeaderBlock("not UTF-8"))
}

fn parse(raw: &[u8], limits: &Limits) -> Result<Headers, FrameError> {
    let mut at = 0;
    let count = read_u32(raw, &mut at)? as usize;
    if count > limits.max_headers {
        return Err(FrameError::TooManyHeaders {
            count,
            max: limits.max_headers,
        });
    }
    let mut headers = Headers::with_capacity(count);
    for _ in 0..count {
        let name = read_str(raw, &mut at, limits)?;
        if name.is_empty() {
            return Err(FrameError::MalformedHeaderBlock("an empty header name"));
        }
        if name.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(FrameError::MalformedHeaderBlock("an uppercase header name"));
        }
        if headers.iter().any(|(n, _)| n == name) {
            return Err(FrameError::MalformedHeaderBlock("a duplicate header name"));
        }
        let value = read_str(raw, &mut at, limits)?;
        headers.push((name.to_owned(), value.to_owned()));
    }
    if at != raw.len() {
        return Err(FrameError::MalformedHeaderBlock(
            "bytes after the last header",
        ));
    }
    Ok(headers)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    fn pairs(p: &[(&str, &str)]) -> Headers {
        p.iter()
            .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn blocks_from_another_zlib_are_read_in_order() {
        // Two blocks of one stream, compressed by Python's zlib with the SPDY dictionary and
        // a sync flush after each: kubectl's first two streams of a port-forward.
        let first = hex("78bbe3c6a7c202253a48f95b044eea16061606409ab308125f99a074cc68004e892545a989b9d0c2863515141500000000ffff");
        let second = hex("225333a8a44a04000000ffff");
        let mut inflater = Inflater::new(Limits::default());
        assert_eq!(
            inflater.inflate(&first).unwrap(),
            pairs(&[
                ("port", "8080"),
                ("requestid", "0"),
                ("streamtype", "error")
            ])
        );
        assert_eq!(
            inflater.inflate(&second).unwrap(),
            pairs(&[("port", "8080"), ("requestid", "0"), ("streamtype", "data")])
        );
    }

    #[test]
    fn blocks_round_trip_through_one_session() {
        let mut deflater = Deflater::new();
        let mut inflater = Inflater::new(Limits::default());
        for block in [
            pairs(&[("Port", "80"), ("streamtype", "data")]),
            Headers::new(),
            pairs(&[("x", "a\0b"), ("empty", "")]),
        ] {
            let lower: Headers = block
                .iter()
                .map(|(n, v)| (n.to_ascii_lowercase(), v.clone()))
                .collect();
            assert_eq!(
                inflater
                    .inflate(&deflater.deflate(&block).unwrap())
                    .unwrap(),
                lower
            );
        }
        assert_eq!(get(&pairs(&[("a", "1")]), "a"), Some("1"));
        assert_eq!(get(&pairs(&[("a", "1")]), "b"), None);
    }

    #[test]
    fn inflating_is_bounded() {
        let limits = Limits::default();
        // A megabyte of one letter compresses to about a kilobyte.
        let bomb = pairs(&[("x", &"a".repeat(1 << 20))]);
        let block = Deflater::new().deflate(&bomb).unwrap();
        assert!(block.len() < 4096, "{}", block.len());
        assert_eq!(
            Inflater::new(limits.clone()).inflate(&block),
            Err(FrameError::HeaderBlockTooLarge {
                max: limits.max_header_block
            })
        );
        let many: Headers = (0..limits.max_headers + 1)
            .map(|i| (format!("h{i}"), String::new()))
            .collect();
        let block = Deflater::new().deflate(&many).unwrap();
        assert_eq!(
            Inflater::new(limits.clone()).inflate(&block),
            Err(FrameError::TooManyHeaders {
                count: limits.max_headers + 1,
                max: limits.max_headers
            })
        );
        let long = pairs(&[("x", &"v".repeat(limits.max_header_field + 1))]);
        let block = Deflater::new().deflate(&long).unwrap();
        assert_eq!(
            Inflater::new(limits).inflate(&block),
            Err(FrameError::HeaderTooLarge)
        );
    }

    #[test]
    fn malformed_blocks_say_why() {
        let limits = Limits::default();
        assert!(matches!(
            Inflater::new(limits.clone()).inflate(b"not zlib at all"),
            Err(FrameError::Compression(_))
        ));
        // A zlib stream without a dictionary is fine for zlib but its pairs must parse.
        let raw_block = |raw: &[u8]| {
            let mut c = Compress::new(Compression::default(), true);
            c.set_dictionary(dictionary::dictionary()).unwrap();
            let mut out = Vec::with_capacity(raw.len() + 128);
            c.compress_vec(raw, &mut out, FlushCompress::Sync).unwrap();
            out
        };
        for (raw, why) in [
            (&b"\0\0\0\x01\0\0\0\x04port"[..], "truncated"),
            (b"\0\0\0\x01\0\0\0\0\0\0\0\0", "an empty header name"),
            (b"\0\0\0\x01\0\0\0\x01X\0\0\0\0", "an uppercase header name"),
            (
                b"\0\0\0\x02\0\0\0\x01a\0\0\0\0\0\0\0\x01a\0\0\0\0",
                "a duplicate header name",
            ),
            (b"\0\0\0\0junk", "bytes after the last header"),
            (b"\0\0", "truncated"),
        ] {
            assert_eq!(
                Inflater::new(limits.clone()).inflate(&raw_block(raw)),
                Err(FrameError::MalformedHeaderBlock(why)),
                "{raw:?}"
            );
        }
    }
}
