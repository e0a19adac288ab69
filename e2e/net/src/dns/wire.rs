//! The DNS wire format (RFC 1035), as much as a cluster DNS needs: one
//! question in, A/AAAA (or PTR) answers out.

use std::net::IpAddr;

use crate::Error;

pub const A: u16 = 1;
pub const AAAA: u16 = 28;
pub const PTR: u16 = 12;
const CLASS_IN: u16 = 1;
const HEADER: usize = 12;

/// Response codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rcode {
    NoError = 0,
    FormErr = 1,
    NxDomain = 3,
    Refused = 5,
}

/// A question.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Question {
    pub name: String,
    pub kind: u16,
    pub class: u16,
}

/// A parsed query: its header and its single question (with the raw bytes
/// of the question, echoed in the response).
#[derive(Clone, Debug)]
pub struct Query {
    header: [u8; HEADER],
    pub question: Question,
    raw_question: Vec<u8>,
}

/// Parses a query; `Err(Some(header))` for a malformed one that still has a
/// header (answered FORMERR), `Err(None)` for one not worth an answer.
pub fn parse_query(msg: &[u8]) -> Result<Query, Option<[u8; HEADER]>> {
    let header: [u8; HEADER] = msg
        .get(..HEADER)
        .and_then(|h| h.try_into().ok())
        .ok_or(None)?;
    if header[2] & 0x80 != 0 {
        return Err(None); // a response, not a query
    }
    let qdcount = u16::from_be_bytes([header[4], header[5]]);
    if qdcount != 1 {
        return Err(Some(header));
    }
    let (name, end) = read_name(msg, HEADER).ok_or(Some(header))?;
    let fixed = msg.get(end..end + 4).ok_or(Some(header))?;
    let question = Question {
        name,
        kind: u16::from_be_bytes([fixed[0], fixed[1]]),
        class: u16::from_be_bytes([fixed[2], fixed[3]]),
    };
    Ok(Query {
        header,
        question,
        raw_question: msg[HEADER..end + 4].to_vec(),
    })
}

/// Reads an uncompressed name starting at `at`; the name and the offset
/// after it.
fn read_name(msg: &[u8], mut at: usize) -> Option<(String, usize)> {
    let mut labels = Vec::new();
    loop {
        let len = usize::from(*msg.get(at)?);
        at += 1;
        if len == 0 {
            break;
        }
        if len > 63 {
            return None; // compression in a question, or an invalid label
        }
        labels.push(String::from_utf8_lossy(msg.get(at..at + len)?).into_owned());
        at += len;
    }
    Some((labels.join("."), at))
}

/// One answer: an address (A/AAAA) or a name (PTR).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Record {
    Address(IpAddr),
    Name(String),
}

/// A name in wire form (uncompressed labels).
fn encode_name(name: &str) -> Vec<u8> {
    let mut out = Vec::new();
    for label in name
        .trim_end_matches('.')
        .split('.')
        .filter(|l| !l.is_empty())
    {
        let bytes = &label.as_bytes()[..label.len().min(63)];
        out.push(bytes.len() as u8);
        out.extend_from_slice(bytes);
    }
    out.push(0);
    out
}

/// The response to `q`: authoritative, recursion not available.
pub fn response(q: &Query, rcode: Rcode, records: &[Record], ttl: u32) -> Vec<u8> {
    let answers: Vec<&Record> = if q.question.class == CLASS_IN {
        records.iter().collect()
    } else {
        Vec::new()
    };
    let mut out = Vec::with_capacity(HEADER + q.raw_question.len() + answers.len() * 28);
    out.extend_from_slice(&q.header[..2]);
    out.push(0x84 | (q.header[2] & 0x01)); // QR, AA; RD copied
    out.push(rcode as u8);
    out.extend_from_slice(&1u16.to_be_bytes());
    out.extend_from_slice(&u16::try_from(answers.len()).unwrap_or(0).to_be_bytes());
    out.extend_from_slice(&[0, 0, 0, 0]);
    out.extend_from_slice(&q.raw_question);
    for record in answers {
        out.extend_from_slice(&[0xc0, HEADER as u8]); // the question's name
        let (kind, data): (u16, Vec<u8>) = match record {
            Record::Address(IpAddr::V4(v4)) => (A, v4.octets().to_vec()),
            Record::Address(IpAddr::V6(v6)) => (AAAA, v6.octets().to_vec()),
            Record::Name(name) => (PTR, encode_name(name)),
        };
        out.extend_from_slice(&kind.to_be_bytes());
        out.extend_from_slice(&CLASS_IN.to_be_bytes());
        out.extend_from_slice(&ttl.to_be_bytes());
        out.extend_from_slice(&u16::try_from(data.len()).unwrap_or(0).to_be_bytes());
        out.extend_from_slice(&data);
    }
    out
}

/// A response with only a header and `rcode`.
pub fn error_response(header: &[u8; HEADER], rcode: Rcode) -> Vec<u8> {
    let mut out = header.to_vec();
    out[2] = 0x84 | (header[2] & 0x01);
    out[3] = rcode as u8;
    out[4..].fill(0);
    out
}

/// A recursive query for `name` of type `kind`.
pub fn query(id: u16, name: &str, kind: u16) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    out.extend_from_slice(&encode_name(name));
    out.extend_from_slice(&kind.to_be_bytes());
    out.extend_from_slice(&CLASS_IN.to_be_bytes());
    out
}

/// The rcode and the A/AAAA addresses of a response to query `id`.
pub fn parse_response(msg: &[u8], id: u16) -> Result<(Rcode, Vec<IpAddr>), Error> {
    let bad = |why: &str| Error::Invalid(format!("malformed DNS response: {why}"));
    if msg.len() < HEADER || u16::from_be_bytes([msg[0], msg[1]]) != id {
        return Err(bad("wrong id or too short"));
    }
    let rcode = match msg[3] & 0x0f {
        0 => Rcode::NoError,
        1 => Rcode::FormErr,
        3 => Rcode::NxDomain,
        _ => Rcode::Refused,
    };
    let qdcount = u16::from_be_bytes([msg[4], msg[5]]);
    let ancount = u16::from_be_bytes([msg[6], msg[7]]);
    let mut at = HEADER;
    for _ in 0..qdcount {
        at = skip_name(msg, at).ok_or_else(|| bad("question"))? + 4;
    }
    let mut addresses = Vec::new();
    for _ in 0..ancount {
        at = skip_name(msg, at).ok_or_else(|| bad("answer name"))?;
        let fixed = msg.get(at..at + 10).ok_or_else(|| bad("answer"))?;
        let kind = u16::from_be_bytes([fixed[0], fixed[1]]);
        let len = usize::from(u16::from_be_bytes([fixed[8], fixed[9]]));
        let data = msg
            .get(at + 10..at + 10 + len)
            .ok_or_else(|| bad("rdata"))?;
        if let (A, Ok(v4)) = (kind, <[u8; 4]>::try_from(data)) {
            addresses.push(IpAddr::from(v4));
        } else if let (AAAA, Ok(v6)) = (kind, <[u8; 16]>::try_from(data)) {
            addresses.push(IpAddr::from(v6));
        }
        at += 10 + len;
    }
    Ok((rcode, addresses))
}

/// The offset after a (possibly compressed) name at `at`.
fn skip_name(msg: &[u8], mut at: usize) -> Option<usize> {
    loop {
        let len = *msg.get(at)?;
        if len & 0xc0 == 0xc0 {
            return Some(at + 2);
        }
        at += 1 + usize::from(len);
        if len == 0 {
            return Some(at);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_query_and_its_answer_round_trip() -> Result<(), Error> {
        let q = query(7, "web.default.svc.cluster.local", A);
        let parsed = parse_query(&q).map_err(|_| Error::Invalid("parse".into()))?;
        assert_eq!(parsed.question.name, "web.default.svc.cluster.local");
        assert_eq!(parsed.question.kind, A);
        let ips: Vec<IpAddr> = vec![IpAddr::from([10, 96, 16, 10])];
        let records: Vec<Record> = ips.iter().map(|ip| Record::Address(*ip)).collect();
        let r = response(&parsed, Rcode::NoError, &records, 5);
        assert_eq!(parse_response(&r, 7)?, (Rcode::NoError, ips));
        let nx = response(&parsed, Rcode::NxDomain, &[], 5);
        assert_eq!(parse_response(&nx, 7)?, (Rcode::NxDomain, vec![]));
        assert!(parse_response(&nx, 8).is_err(), "wrong id");
        Ok(())
    }

    #[test]
    fn a_ptr_answer_carries_the_name() -> Result<(), Error> {
        let q = query(9, "10.0.131.10.in-addr.arpa", PTR);
        let parsed = parse_query(&q).map_err(|_| Error::Invalid("parse".into()))?;
        let name = "etcd-0.etcd-discovery.ns.svc.cluster.local";
        let r = response(&parsed, Rcode::NoError, &[Record::Name(name.into())], 5);
        let tail = encode_name(name);
        assert!(r.ends_with(&tail));
        assert_eq!(parse_response(&r, 9)?, (Rcode::NoError, vec![]));
        assert_eq!(u16::from_be_bytes([r[6], r[7]]), 1, "one answer");
        Ok(())
    }

    #[test]
    fn malformed_queries() {
        assert!(matches!(parse_query(&[0; 5]), Err(None)));
        let mut two = query(1, "a.b", A);
        two[5] = 2;
        assert!(matches!(parse_query(&two), Err(Some(_))));
        let truncated = &query(1, "abc.def", A)[..16];
        assert!(matches!(parse_query(truncated), Err(Some(_))));
    }
}
