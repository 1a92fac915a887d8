//! The NBD wire protocol (fixed newstyle handshake, simple replies): constants, and pure
//! parsers and encoders over byte buffers. The server's I/O lives in `lauscha-nbd`; every
//! byte it reads goes through [`parse_option`] or [`parse_request`], which never panic on
//! any input (property-tested), so a hostile or broken client gets an error, not a crash.
//!
//! Reference: <https://github.com/NetworkBlockDevice/nbd/blob/master/doc/proto.md>.

/// "NBDMAGIC": the first 8 bytes a server sends.
pub const NBD_MAGIC: u64 = 0x4e42_444d_4147_4943;
/// "IHAVEOPT": newstyle negotiation magic, and the prefix of every option request.
pub const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
/// Magic of option replies.
pub const OPT_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
/// Magic of transmission requests.
pub const REQUEST_MAGIC: u32 = 0x2560_9513;
/// Magic of simple replies.
pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;

/// Server handshake flags.
pub const FLAG_FIXED_NEWSTYLE: u16 = 1 << 0;
/// The server does not send the 124 zero bytes after NBD_OPT_EXPORT_NAME.
pub const FLAG_NO_ZEROES: u16 = 1 << 1;
/// Client flag: it speaks fixed newstyle.
pub const CLIENT_FIXED_NEWSTYLE: u32 = 1 << 0;
/// Client flag: it does not want the zero bytes.
pub const CLIENT_NO_ZEROES: u32 = 1 << 1;

/// Transmission flags.
pub const TFLAG_HAS_FLAGS: u16 = 1 << 0;
/// Export is read-only.
pub const TFLAG_READ_ONLY: u16 = 1 << 1;
/// FLUSH is supported.
pub const TFLAG_SEND_FLUSH: u16 = 1 << 2;
/// FUA is supported.
pub const TFLAG_SEND_FUA: u16 = 1 << 3;
/// TRIM is supported.
pub const TFLAG_SEND_TRIM: u16 = 1 << 5;
/// WRITE_ZEROES is supported.
pub const TFLAG_SEND_WRITE_ZEROES: u16 = 1 << 6;
/// WRITE_ZEROES takes NBD_CMD_FLAG_FAST_ZERO.
pub const TFLAG_SEND_FAST_ZERO: u16 = 1 << 11;

/// Options.
pub const OPT_EXPORT_NAME: u32 = 1;
/// Abort negotiation.
pub const OPT_ABORT: u32 = 2;
/// List exports.
pub const OPT_LIST: u32 = 3;
/// Upgrade the connection to TLS.
pub const OPT_STARTTLS: u32 = 5;
/// Ask for an export's details.
pub const OPT_INFO: u32 = 6;
/// Ask for an export's details and start transmission.
pub const OPT_GO: u32 = 7;

/// Option reply types.
pub const REP_ACK: u32 = 1;
/// One export in a LIST answer.
pub const REP_SERVER: u32 = 2;
/// One information item in an INFO/GO answer.
pub const REP_INFO: u32 = 3;
/// Option not supported.
pub const REP_ERR_UNSUP: u32 = (1 << 31) + 1;
/// Refused by policy (no such export for these credentials).
pub const REP_ERR_POLICY: u32 = (1 << 31) + 2;
/// Malformed option.
pub const REP_ERR_INVALID: u32 = (1 << 31) + 3;
/// The server could not do it (e.g. metadata unreachable).
pub const REP_ERR_PLATFORM: u32 = (1 << 31) + 4;
/// TLS is required before this option.
pub const REP_ERR_TLS_REQD: u32 = (1 << 31) + 5;
/// No such export.
pub const REP_ERR_UNKNOWN: u32 = (1 << 31) + 6;

/// Information types.
pub const INFO_EXPORT: u16 = 0;
/// The export's name.
pub const INFO_NAME: u16 = 1;
/// Block size constraints.
pub const INFO_BLOCK_SIZE: u16 = 3;

/// Command flags.
pub const CMD_FLAG_FUA: u16 = 1 << 0;
/// WRITE_ZEROES may not leave a hole (Lauscha zeroes read back the same either way).
pub const CMD_FLAG_NO_HOLE: u16 = 1 << 1;
/// WRITE_ZEROES must fail at once (ENOTSUP) if it would be slower than writing zeros.
pub const CMD_FLAG_FAST_ZERO: u16 = 1 << 4;

/// Error values of replies (Linux errno numbers, as the protocol defines them).
pub const EPERM: u32 = 1;
/// I/O error.
pub const EIO: u32 = 5;
/// Invalid request.
pub const EINVAL: u32 = 22;
/// Out of space.
pub const ENOSPC: u32 = 28;
/// Request beyond the end (for the convenience of clients that distinguish it).
pub const EOVERFLOW: u32 = 75;
/// Command not supported.
pub const ENOTSUP: u32 = 95;
/// Server shutting down.
pub const ESHUTDOWN: u32 = 108;

/// Longest option payload a server reads (an export name is at most 4 KiB).
pub const MAX_OPTION_BYTES: u32 = 64 * 1024;
/// Longest string the protocol carries (an export name, an error message), bytes.
pub const MAX_STRING_BYTES: usize = 4096;

/// What the connection's TLS state makes of one option during negotiation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsGate {
    /// Handle the option as usual.
    Proceed,
    /// Reply NBD_REP_ACK, then hand the stream to the TLS handshake.
    StartTls,
    /// Reply with this error type and go on negotiating.
    Refuse(u32),
    /// Close the connection without a reply: NBD_OPT_EXPORT_NAME has no error reply.
    Close,
}

/// Decides what happens to `option` (with `payload_len` bytes of data) before the
/// server looks at any export, so that with TLS configured nothing about a volume is
/// revealed or attached before the client has authenticated with its certificate.
/// `tls_configured`: the server requires TLS; `tls_active`: the handshake is done.
pub fn tls_gate(option: u32, payload_len: u32, tls_configured: bool, tls_active: bool) -> TlsGate {
    if option == OPT_STARTTLS {
        return if !tls_configured {
            TlsGate::Refuse(REP_ERR_UNSUP)
        } else if tls_active || payload_len != 0 {
            // proto.md: a second STARTTLS, or one with data, is NBD_REP_ERR_INVALID.
            TlsGate::Refuse(REP_ERR_INVALID)
        } else {
            TlsGate::StartTls
        };
    }
    if tls_configured && !tls_active {
        return match option {
            OPT_ABORT => TlsGate::Proceed,
            OPT_EXPORT_NAME => TlsGate::Close,
            _ => TlsGate::Refuse(REP_ERR_TLS_REQD),
        };
    }
    TlsGate::Proceed
}

/// An option request header: `IHAVEOPT, option, length`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OptionHeader {
    /// The option.
    pub option: u32,
    /// Payload bytes that follow.
    pub len: u32,
}

/// Why bytes are not a valid message.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NbdParseError {
    /// The magic number is wrong: the stream is out of step; the connection must close.
    #[error("bad magic {0:#x}")]
    BadMagic(u64),
    /// A length field exceeds what the server accepts.
    #[error("length {0} too large")]
    TooLong(u64),
    /// A payload does not have the structure its option requires.
    #[error("malformed payload: {0}")]
    Malformed(&'static str),
}

/// Parses an option request header (16 bytes).
pub fn parse_option(header: &[u8; 16]) -> Result<OptionHeader, NbdParseError> {
    let magic = u64::from_be_bytes(header[0..8].try_into().expect("8 bytes"));
    if magic != IHAVEOPT {
        return Err(NbdParseError::BadMagic(magic));
    }
    let option = u32::from_be_bytes(header[8..12].try_into().expect("4 bytes"));
    let len = u32::from_be_bytes(header[12..16].try_into().expect("4 bytes"));
    if len > MAX_OPTION_BYTES {
        return Err(NbdParseError::TooLong(u64::from(len)));
    }
    Ok(OptionHeader { option, len })
}

/// The payload of NBD_OPT_INFO and NBD_OPT_GO: an export name and requested info types.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InfoRequest {
    /// The export (volume) name; empty means the default export.
    pub name: String,
    /// Information types the client asks for.
    pub requests: Vec<u16>,
}

/// Parses the payload of NBD_OPT_INFO / NBD_OPT_GO.
pub fn parse_info_request(data: &[u8]) -> Result<InfoRequest, NbdParseError> {
    let take = |at: usize, n: usize| data.get(at..at + n);
    let name_len = take(0, 4)
        .map(|b| u32::from_be_bytes(b.try_into().expect("4 bytes")) as usize)
        .ok_or(NbdParseError::Malformed("no name length"))?;
    let name = take(4, name_len).ok_or(NbdParseError::Malformed("name runs past the payload"))?;
    let name = String::from_utf8(name.to_vec())
        .map_err(|_| NbdParseError::Malformed("name is not UTF-8"))?;
    let at = 4 + name_len;
    let n = take(at, 2)
        .map(|b| u16::from_be_bytes(b.try_into().expect("2 bytes")) as usize)
        .ok_or(NbdParseError::Malformed("no information request count"))?;
    if data.len() != at + 2 + 2 * n {
        return Err(NbdParseError::Malformed(
            "information requests do not fill the payload",
        ));
    }
    let requests = (0..n)
        .map(|i| u16::from_be_bytes([data[at + 2 + 2 * i], data[at + 3 + 2 * i]]))
        .collect();
    Ok(InfoRequest { name, requests })
}

/// An option reply: header, then `data`.
pub fn option_reply(option: u32, reply_type: u32, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(20 + data.len());
    out.extend_from_slice(&OPT_REPLY_MAGIC.to_be_bytes());
    out.extend_from_slice(&option.to_be_bytes());
    out.extend_from_slice(&reply_type.to_be_bytes());
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    out.extend_from_slice(data);
    out
}

/// An error reply to an option, with `message` for people, cut to the protocol's limit
/// for strings (at a character boundary): errors from below may be long.
pub fn option_error(option: u32, reply_type: u32, message: &str) -> Vec<u8> {
    debug_assert!(reply_type & (1 << 31) != 0, "an error reply type");
    let mut end = message.len().min(MAX_STRING_BYTES);
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    option_reply(option, reply_type, &message.as_bytes()[..end])
}

/// What the server says about an export: the same in NBD_OPT_INFO and NBD_OPT_GO.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExportInfo {
    /// Size, bytes.
    pub size_bytes: u64,
    /// Transmission flags.
    pub flags: u16,
    /// Smallest request granularity, bytes.
    pub min_block: u32,
    /// Preferred request size, bytes.
    pub preferred_block: u32,
    /// Largest request payload, bytes.
    pub max_block: u32,
}

/// The NBD_REP_INFO replies for an export: NBD_INFO_EXPORT and NBD_INFO_BLOCK_SIZE always
/// (a client that did not ask still gets the same constraints), NBD_INFO_NAME on request.
pub fn info_replies(option: u32, name: &str, info: &ExportInfo, requested: &[u16]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut export = INFO_EXPORT.to_be_bytes().to_vec();
    export.extend_from_slice(&info.size_bytes.to_be_bytes());
    export.extend_from_slice(&info.flags.to_be_bytes());
    out.extend(option_reply(option, REP_INFO, &export));
    let mut block = INFO_BLOCK_SIZE.to_be_bytes().to_vec();
    block.extend_from_slice(&info.min_block.to_be_bytes());
    block.extend_from_slice(&info.preferred_block.to_be_bytes());
    block.extend_from_slice(&info.max_block.to_be_bytes());
    out.extend(option_reply(option, REP_INFO, &block));
    if requested.contains(&INFO_NAME) {
        let mut named = INFO_NAME.to_be_bytes().to_vec();
        named.extend_from_slice(name.as_bytes());
        out.extend(option_reply(option, REP_INFO, &named));
    }
    out.extend(option_reply(option, REP_ACK, &[]));
    out
}

/// A transmission request header (28 bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Request {
    /// Command flags.
    pub flags: u16,
    /// Command type.
    pub command: u16,
    /// Chosen by the client, echoed in the reply.
    pub cookie: u64,
    /// Byte offset.
    pub offset: u64,
    /// Byte length (payload length for WRITE).
    pub len: u32,
}

/// Commands.
pub const CMD_READ: u16 = 0;
/// Write the payload.
pub const CMD_WRITE: u16 = 1;
/// Disconnect.
pub const CMD_DISC: u16 = 2;
/// Make every completed write durable.
pub const CMD_FLUSH: u16 = 3;
/// Discard a range (it reads as zeros afterwards).
pub const CMD_TRIM: u16 = 4;
/// Write zeros to a range.
pub const CMD_WRITE_ZEROES: u16 = 6;

/// Parses a request header. Only the magic is checked here; ranges and sizes are the
/// server's checks ([`check_range`]), answered with an error reply, not a hang-up.
pub fn parse_request(header: &[u8; 28]) -> Result<Request, NbdParseError> {
    let magic = u32::from_be_bytes(header[0..4].try_into().expect("4 bytes"));
    if magic != REQUEST_MAGIC {
        return Err(NbdParseError::BadMagic(u64::from(magic)));
    }
    Ok(Request {
        flags: u16::from_be_bytes([header[4], header[5]]),
        command: u16::from_be_bytes([header[6], header[7]]),
        cookie: u64::from_be_bytes(header[8..16].try_into().expect("8 bytes")),
        offset: u64::from_be_bytes(header[16..24].try_into().expect("8 bytes")),
        len: u32::from_be_bytes(header[24..28].try_into().expect("4 bytes")),
    })
}

/// Encodes a request header (for tests and clients).
pub fn encode_request(r: &Request) -> [u8; 28] {
    let mut out = [0u8; 28];
    out[0..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
    out[4..6].copy_from_slice(&r.flags.to_be_bytes());
    out[6..8].copy_from_slice(&r.command.to_be_bytes());
    out[8..16].copy_from_slice(&r.cookie.to_be_bytes());
    out[16..24].copy_from_slice(&r.offset.to_be_bytes());
    out[24..28].copy_from_slice(&r.len.to_be_bytes());
    out
}

/// A simple reply header (16 bytes); READ data follows a success.
pub fn simple_reply(error: u32, cookie: u64) -> [u8; 16] {
    let mut out = [0u8; 16];
    out[0..4].copy_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
    out[4..8].copy_from_slice(&error.to_be_bytes());
    out[8..16].copy_from_slice(&cookie.to_be_bytes());
    out
}

/// Checks a request's command flags: FUA on any command (the protocol lets a client set
/// it on every command once NBD_FLAG_SEND_FUA is advertised; it matters for writes),
/// NO_HOLE and FAST_ZERO on WRITE_ZEROES; anything else is EINVAL, as the protocol lets
/// a server answer a flag it does not know or that the command does not take (DF and
/// REQ_ONE need structured replies and block status, which this server does not offer).
pub fn check_flags(r: &Request) -> Result<(), u32> {
    let allowed = match r.command {
        CMD_WRITE_ZEROES => CMD_FLAG_FUA | CMD_FLAG_NO_HOLE | CMD_FLAG_FAST_ZERO,
        _ => CMD_FLAG_FUA,
    };
    if r.flags & !allowed != 0 {
        return Err(EINVAL);
    }
    Ok(())
}

/// Checks a request's range against the export: inside the export, aligned to the
/// minimum block size, at most `max_block` for data-carrying commands. `Err` is the
/// errno to reply with.
pub fn check_range(r: &Request, info: &ExportInfo) -> Result<(), u32> {
    let end = r.offset.checked_add(u64::from(r.len)).ok_or(EINVAL)?;
    if end > info.size_bytes {
        return Err(if r.command == CMD_WRITE || r.command == CMD_WRITE_ZEROES {
            ENOSPC
        } else {
            EINVAL
        });
    }
    let min = u64::from(info.min_block);
    if !r.offset.is_multiple_of(min) || !u64::from(r.len).is_multiple_of(min) {
        return Err(EINVAL);
    }
    if (r.command == CMD_READ || r.command == CMD_WRITE) && r.len > info.max_block {
        return Err(EINVAL);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn info() -> ExportInfo {
        ExportInfo {
            size_bytes: 1 << 30,
            flags: TFLAG_HAS_FLAGS,
            min_block: 4096,
            preferred_block: 1 << 20,
            max_block: 32 << 20,
        }
    }

    #[test]
    fn info_request_round_trip_and_truncations() {
        let mut data = 3u32.to_be_bytes().to_vec();
        data.extend_from_slice(b"vol");
        data.extend_from_slice(&2u16.to_be_bytes());
        data.extend_from_slice(&INFO_NAME.to_be_bytes());
        data.extend_from_slice(&INFO_BLOCK_SIZE.to_be_bytes());
        let r = parse_info_request(&data).unwrap();
        assert_eq!(r.name, "vol");
        assert_eq!(r.requests, vec![INFO_NAME, INFO_BLOCK_SIZE]);
        for cut in 0..data.len() {
            assert!(parse_info_request(&data[..cut]).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn tls_gate_follows_the_protocol() {
        use TlsGate::*;
        // Without TLS configured: STARTTLS is unsupported, everything else proceeds.
        assert_eq!(
            tls_gate(OPT_STARTTLS, 0, false, false),
            Refuse(REP_ERR_UNSUP)
        );
        assert_eq!(tls_gate(OPT_GO, 10, false, false), Proceed);
        assert_eq!(tls_gate(OPT_EXPORT_NAME, 3, false, false), Proceed);
        // Configured, before the handshake: only STARTTLS and ABORT.
        assert_eq!(tls_gate(OPT_STARTTLS, 0, true, false), StartTls);
        assert_eq!(
            tls_gate(OPT_STARTTLS, 4, true, false),
            Refuse(REP_ERR_INVALID)
        );
        assert_eq!(tls_gate(OPT_ABORT, 0, true, false), Proceed);
        assert_eq!(tls_gate(OPT_EXPORT_NAME, 3, true, false), Close);
        for option in [OPT_LIST, OPT_INFO, OPT_GO, 8, 10] {
            assert_eq!(tls_gate(option, 0, true, false), Refuse(REP_ERR_TLS_REQD));
        }
        // After the handshake: a second STARTTLS is invalid, the rest proceeds.
        assert_eq!(
            tls_gate(OPT_STARTTLS, 0, true, true),
            Refuse(REP_ERR_INVALID)
        );
        for option in [OPT_LIST, OPT_INFO, OPT_GO, OPT_EXPORT_NAME, OPT_ABORT] {
            assert_eq!(tls_gate(option, 0, true, true), Proceed);
        }
    }

    #[test]
    fn ranges_are_checked() {
        let req = |command, offset, len| Request {
            flags: 0,
            command,
            cookie: 1,
            offset,
            len,
        };
        assert_eq!(check_range(&req(CMD_READ, 0, 4096), &info()), Ok(()));
        assert_eq!(check_range(&req(CMD_READ, 1, 4096), &info()), Err(EINVAL));
        assert_eq!(check_range(&req(CMD_READ, 0, 100), &info()), Err(EINVAL));
        assert_eq!(
            check_range(&req(CMD_WRITE, (1 << 30) - 4096, 8192), &info()),
            Err(ENOSPC)
        );
        assert_eq!(
            check_range(&req(CMD_READ, u64::MAX - 10, 4096), &info()),
            Err(EINVAL)
        );
        assert_eq!(
            check_range(&req(CMD_READ, 0, 64 << 20), &info()),
            Err(EINVAL)
        );
        assert_eq!(check_range(&req(CMD_TRIM, 0, 64 << 20), &info()), Ok(()));
    }

    #[test]
    fn flags_are_checked_per_command() {
        let req = |command, flags| Request {
            flags,
            command,
            cookie: 1,
            offset: 0,
            len: 4096,
        };
        for command in [CMD_READ, CMD_WRITE, CMD_FLUSH, CMD_TRIM, CMD_WRITE_ZEROES] {
            assert_eq!(check_flags(&req(command, 0)), Ok(()));
            assert_eq!(check_flags(&req(command, CMD_FLAG_FUA)), Ok(()));
            assert_eq!(check_flags(&req(command, 1 << 7)), Err(EINVAL));
        }
        let zero_flags = CMD_FLAG_FUA | CMD_FLAG_NO_HOLE | CMD_FLAG_FAST_ZERO;
        assert_eq!(check_flags(&req(CMD_WRITE_ZEROES, zero_flags)), Ok(()));
        assert_eq!(check_flags(&req(CMD_WRITE, CMD_FLAG_NO_HOLE)), Err(EINVAL));
        assert_eq!(check_flags(&req(CMD_TRIM, CMD_FLAG_FAST_ZERO)), Err(EINVAL));
        // DF and REQ_ONE belong to structured replies and block status.
        assert_eq!(check_flags(&req(CMD_READ, 1 << 2)), Err(EINVAL));
        assert_eq!(check_flags(&req(CMD_READ, 1 << 3)), Err(EINVAL));
    }

    #[test]
    fn option_errors_are_cut_to_the_string_limit_at_a_character() {
        let header_bytes = 20;
        let short = option_error(OPT_GO, REP_ERR_POLICY, "taken");
        assert_eq!(&short[header_bytes..], b"taken");
        // 'ä' is two bytes: 4095 of them would end in the middle of one.
        let long = "x".repeat(4095) + &"ä".repeat(100);
        let reply = option_error(OPT_GO, REP_ERR_POLICY, &long);
        let message = std::str::from_utf8(&reply[header_bytes..]).expect("whole characters");
        assert_eq!(message.len(), 4095);
        assert_eq!(
            u32::from_be_bytes(reply[16..20].try_into().unwrap()),
            4095,
            "the length field says what follows"
        );
    }

    #[test]
    fn request_header_round_trip() {
        let r = Request {
            flags: CMD_FLAG_FUA,
            command: CMD_WRITE,
            cookie: 0xdead_beef,
            offset: 8192,
            len: 4096,
        };
        assert_eq!(parse_request(&encode_request(&r)), Ok(r));
    }

    proptest! {
        /// No byte string makes a parser panic.
        #[test]
        fn parsers_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = parse_info_request(&bytes);
            let mut h16 = [0u8; 16];
            let mut h28 = [0u8; 28];
            for (i, b) in bytes.iter().enumerate() {
                if i < 16 { h16[i] = *b; }
                if i < 28 { h28[i] = *b; }
            }
            let _ = parse_option(&h16);
            if let Ok(r) = parse_request(&h28) {
                let _ = check_flags(&r);
                let _ = check_range(&r, &info());
            }
        }

        /// With TLS required and not yet started, no option but ABORT and an empty
        /// STARTTLS gets past the gate, whatever its number and length.
        #[test]
        fn nothing_but_starttls_and_abort_passes_before_tls(option in any::<u32>(), len in any::<u32>()) {
            let gate = tls_gate(option, len, true, false);
            let allowed = option == OPT_ABORT || (option == OPT_STARTTLS && len == 0);
            prop_assert_eq!(matches!(gate, TlsGate::Proceed | TlsGate::StartTls), allowed);
        }

        /// Any request inside the export, aligned and small enough, passes the checks;
        /// anything past the end does not.
        #[test]
        fn in_range_requests_pass(block in 0u64..(1 << 18), blocks in 1u32..256, command in 0u16..2) {
            let r = Request { flags: 0, command, cookie: 0, offset: block * 4096, len: blocks * 4096 };
            let inside = r.offset + u64::from(r.len) <= info().size_bytes;
            prop_assert_eq!(check_range(&r, &info()).is_ok(), inside);
        }
    }
}
