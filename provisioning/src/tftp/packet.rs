//! TFTP packets (RFC 1350) with option extension (RFC 2347): a decoder that
//! never panics and an encoder.

/// TFTP error codes (RFC 1350, RFC 2347).
pub mod code {
    pub const NOT_DEFINED: u16 = 0;
    pub const FILE_NOT_FOUND: u16 = 1;
    pub const ACCESS_VIOLATION: u16 = 2;
    pub const ILLEGAL_OPERATION: u16 = 4;
    pub const OPTION_NEGOTIATION: u16 = 8;
}

/// Longest request accepted: RFC 2347 allows 512 bytes and some clients send more.
pub const MAX_REQUEST: usize = 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet {
    ReadRequest {
        filename: String,
        mode: String,
        options: Vec<(String, String)>,
    },
    WriteRequest {
        filename: String,
        mode: String,
    },
    Data {
        block: u16,
        data: Vec<u8>,
    },
    Ack {
        block: u16,
    },
    Error {
        code: u16,
        message: String,
    },
    OptionAck {
        options: Vec<(String, String)>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PacketError {
    #[error("packet of {0} bytes is too short")]
    Short(usize),
    #[error("unknown opcode {0}")]
    Opcode(u16),
    #[error("string field is not NUL-terminated")]
    Unterminated,
    #[error("string field is not UTF-8")]
    NotUtf8,
    #[error("option without a value")]
    DanglingOption,
    #[error("request of {0} bytes is too long")]
    TooLong(usize),
}

/// Splits NUL-terminated strings; the buffer must end with a NUL.
fn strings(bytes: &[u8]) -> Result<Vec<String>, PacketError> {
    if bytes.is_empty() {
        return Ok(Vec::new());
    }
    if bytes.last() != Some(&0) {
        return Err(PacketError::Unterminated);
    }
    bytes[..bytes.len() - 1]
        .split(|b| *b == 0)
        .map(|s| String::from_utf8(s.to_vec()).map_err(|_| PacketError::NotUtf8))
        .collect()
}

fn pairs(fields: &[String]) -> Result<Vec<(String, String)>, PacketError> {
    if !fields.len().is_multiple_of(2) {
        return Err(PacketError::DanglingOption);
    }
    Ok(fields
        .chunks(2)
        .map(|c| (c[0].to_ascii_lowercase(), c[1].clone()))
        .collect())
}

impl Packet {
    pub fn decode(bytes: &[u8]) -> Result<Packet, PacketError> {
        let (opcode, body) = bytes
            .split_at_checked(2)
            .ok_or(PacketError::Short(bytes.len()))?;
        let opcode = u16::from_be_bytes([opcode[0], opcode[1]]);
        let block = || {
            body.get(..2)
                .map(|b| u16::from_be_bytes([b[0], b[1]]))
                .ok_or(PacketError::Short(bytes.len()))
        };
        match opcode {
            1 | 2 => {
                if bytes.len() > MAX_REQUEST {
                    return Err(PacketError::TooLong(bytes.len()));
                }
                let fields = strings(body)?;
                if fields.len() < 2 {
                    return Err(PacketError::Short(bytes.len()));
                }
                let filename = fields[0].clone();
                let mode = fields[1].to_ascii_lowercase();
                if opcode == 1 {
                    Ok(Packet::ReadRequest {
                        filename,
                        mode,
                        options: pairs(&fields[2..])?,
                    })
                } else {
                    Ok(Packet::WriteRequest { filename, mode })
                }
            }
            3 => Ok(Packet::Data {
                block: block()?,
                data: body[2..].to_vec(),
            }),
            4 => Ok(Packet::Ack { block: block()? }),
            5 => {
                let code = block()?;
                let message = strings(&body[2..])?.into_iter().next().unwrap_or_default();
                Ok(Packet::Error { code, message })
            }
            6 => Ok(Packet::OptionAck {
                options: pairs(&strings(body)?)?,
            }),
            other => Err(PacketError::Opcode(other)),
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let put_str = |out: &mut Vec<u8>, s: &str| {
            out.extend_from_slice(s.as_bytes());
            out.push(0);
        };
        match self {
            Packet::ReadRequest {
                filename,
                mode,
                options,
            } => {
                out.extend_from_slice(&1u16.to_be_bytes());
                put_str(&mut out, filename);
                put_str(&mut out, mode);
                for (k, v) in options {
                    put_str(&mut out, k);
                    put_str(&mut out, v);
                }
            }
            Packet::WriteRequest { filename, mode } => {
                out.extend_from_slice(&2u16.to_be_bytes());
                put_str(&mut out, filename);
                put_str(&mut out, mode);
            }
            Packet::Data { block, data } => {
                out.extend_from_slice(&3u16.to_be_bytes());
                out.extend_from_slice(&block.to_be_bytes());
                out.extend_from_slice(data);
            }
            Packet::Ack { block } => {
                out.extend_from_slice(&4u16.to_be_bytes());
                out.extend_from_slice(&block.to_be_bytes());
            }
            Packet::Error { code, message } => {
                out.extend_from_slice(&5u16.to_be_bytes());
                out.extend_from_slice(&code.to_be_bytes());
                put_str(&mut out, message);
            }
            Packet::OptionAck { options } => {
                out.extend_from_slice(&6u16.to_be_bytes());
                for (k, v) in options {
                    put_str(&mut out, k);
                    put_str(&mut out, v);
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let packets = [
            Packet::ReadRequest {
                filename: "undionly.kpxe".into(),
                mode: "octet".into(),
                options: vec![
                    ("blksize".into(), "1468".into()),
                    ("tsize".into(), "0".into()),
                ],
            },
            Packet::WriteRequest {
                filename: "x".into(),
                mode: "octet".into(),
            },
            Packet::Data {
                block: 7,
                data: vec![1, 2, 3],
            },
            Packet::Ack { block: 65535 },
            Packet::Error {
                code: code::FILE_NOT_FOUND,
                message: "File not found".into(),
            },
            Packet::OptionAck {
                options: vec![("windowsize".into(), "8".into())],
            },
        ];
        for p in packets {
            assert_eq!(Packet::decode(&p.encode()).unwrap(), p);
        }
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(Packet::decode(&[]).is_err());
        assert!(Packet::decode(&[0, 1, b'a']).is_err());
        assert!(Packet::decode(&[0, 1, b'a', 0]).is_err());
        assert!(Packet::decode(&[0, 9, 0, 0]).is_err());
        assert!(Packet::decode(&[0, 4, 0]).is_err());
        let mut long = vec![0, 1];
        long.extend(std::iter::repeat_n(b'a', 2000));
        long.push(0);
        assert!(matches!(
            Packet::decode(&long),
            Err(PacketError::TooLong(_))
        ));
        // Option names are case-insensitive (RFC 2347).
        let p = Packet::decode(b"\x00\x01f\x00octet\x00BLKSIZE\x00512\x00").unwrap();
        assert!(matches!(p, Packet::ReadRequest { options, .. } if options[0].0 == "blksize"));
    }
}
