//! One DNS request in, one reply out, for the cluster zone: parsing and writing with
//! hickory-proto, and the protocol rules around the zone's answer.
//!
//! - Only standard queries with one question of class IN are answered; other opcodes get
//!   NOTIMP, a malformed message FORMERR (when its id can be read at all; else it is dropped),
//!   responses are never answered (no reflection loops), zone transfers are REFUSED.
//! - Names of the zone are answered authoritatively: NXDOMAIN and NODATA carry the SOA, whose
//!   minimum is the negative TTL. Other names are handed back to the caller to forward.
//! - EDNS0: a request with an OPT record gets one back; over UDP a reply larger than the
//!   client's payload size (512 without EDNS, at most [`MAX_UDP_PAYLOAD`]) is truncated with
//!   TC set, so the client retries over TCP.

use hickory_proto::op::{Edns, Message, MessageType, Metadata, OpCode, ResponseCode};
use hickory_proto::rr::{DNSClass, RecordType};

use super::zone::{Outcome, Zone};

/// The largest UDP reply sent (the DNS flag day 2020 recommendation).
pub const MAX_UDP_PAYLOAD: u16 = 1232;
/// The UDP reply size without EDNS0.
const CLASSIC_UDP_PAYLOAD: u16 = 512;

/// How the request came.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// A datagram: replies are bounded by the client's payload size.
    Udp,
    /// A TCP stream: replies up to 64 KiB.
    Tcp,
}

/// What to do with a request.
#[derive(Debug)]
pub enum Handled {
    /// Send these bytes back.
    Reply(Vec<u8>),
    /// Not a name of the cluster: resolve it elsewhere (the request, parsed).
    Forward(Box<Message>),
    /// Send nothing (unreadable, or not a request).
    Drop,
}

/// Answers `request` from `zone`.
pub fn handle(zone: &Zone, request: &[u8], transport: Transport) -> Handled {
    let message = match Message::from_vec(request) {
        Ok(m) => m,
        Err(_) => {
            // The id is the first two bytes of any message with a whole header.
            if request.len() < 12 {
                return Handled::Drop;
            }
            let id = u16::from_be_bytes([request[0], request[1]]);
            return reply(
                Message::error_msg(id, OpCode::Query, ResponseCode::FormErr),
                transport,
                None,
            );
        }
    };
    if message.metadata.message_type != MessageType::Query {
        return Handled::Drop;
    }
    let mut response = response_to(&message);
    let client_payload = message.edns.as_ref().map(Edns::max_payload);
    let refuse = |mut response: Message, code: ResponseCode| {
        response.metadata.response_code = code;
        reply(response, transport, client_payload)
    };
    if message.metadata.op_code != OpCode::Query {
        return refuse(response, ResponseCode::NotImp);
    }
    let [query] = message.queries.as_slice() else {
        return refuse(response, ResponseCode::FormErr);
    };
    if query.query_class() != DNSClass::IN {
        return refuse(response, ResponseCode::Refused);
    }
    if matches!(query.query_type(), RecordType::AXFR | RecordType::IXFR) {
        return refuse(response, ResponseCode::Refused);
    }
    match zone.lookup(query.name(), query.query_type()) {
        Outcome::Answer {
            answers,
            additionals,
        } => {
            response.metadata.authoritative = true;
            response.add_answers(answers);
            response.add_additionals(additionals);
        }
        Outcome::NoData => {
            response.metadata.authoritative = true;
            response.add_authority(zone.soa());
        }
        Outcome::NxDomain => {
            response.metadata.authoritative = true;
            response.metadata.response_code = ResponseCode::NXDomain;
            response.add_authority(zone.soa());
        }
        Outcome::NotAuthoritative => return Handled::Forward(Box::new(message)),
    }
    reply(response, transport, client_payload)
}

/// The reply to a request that could not be answered (the upstream failed): SERVFAIL.
pub fn server_failure(request: &Message, transport: Transport) -> Handled {
    let mut response = response_to(request);
    response.metadata.response_code = ResponseCode::ServFail;
    reply(
        response,
        transport,
        request.edns.as_ref().map(Edns::max_payload),
    )
}

/// An empty response to `request`: its id, opcode, flags and question, recursion available
/// (other names are forwarded), and an OPT record when the request had one.
fn response_to(request: &Message) -> Message {
    let mut response = Message::new(
        request.metadata.id,
        MessageType::Response,
        request.metadata.op_code,
    );
    response.metadata = Metadata::response_from_request(&request.metadata);
    response.metadata.recursion_available = true;
    response.add_queries(request.queries.iter().cloned());
    if request.edns.is_some() {
        let mut edns = Edns::new();
        edns.set_max_payload(MAX_UDP_PAYLOAD);
        response.set_edns(edns);
    }
    response
}

/// Encodes `response`, truncated for UDP when it does not fit the client's payload size.
fn reply(response: Message, transport: Transport, client_payload: Option<u16>) -> Handled {
    let Ok(bytes) = response.to_vec() else {
        return Handled::Drop;
    };
    let limit = match (transport, client_payload) {
        (Transport::Tcp, _) => usize::from(u16::MAX),
        (Transport::Udp, None) => usize::from(CLASSIC_UDP_PAYLOAD),
        (Transport::Udp, Some(p)) => usize::from(p.clamp(CLASSIC_UDP_PAYLOAD, MAX_UDP_PAYLOAD)),
    };
    if bytes.len() <= limit {
        return Handled::Reply(bytes);
    }
    match response.truncate().to_vec() {
        Ok(truncated) => Handled::Reply(truncated),
        Err(_) => Handled::Drop,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::Query;
    use hickory_proto::rr::Name;
    use k8s_openapi::api::core::v1::Service;
    use k8s_openapi::api::discovery::v1::EndpointSlice;
    use serde_json::json;

    fn zone() -> Zone {
        let svc: Service = serde_json::from_value(
            json!({"metadata": {"name": "kubia", "namespace": "default"},
            "spec": {"clusterIP": "10.96.0.20"}}),
        )
        .unwrap();
        let big: Service =
            serde_json::from_value(json!({"metadata": {"name": "big", "namespace": "default"},
            "spec": {"clusterIP": "None"}}))
            .unwrap();
        let endpoints: Vec<_> = (0..100)
            .map(|i| json!({"addresses": [format!("10.244.{}.{}", i / 250, i % 250 + 1)]}))
            .collect();
        let slice: EndpointSlice = serde_json::from_value(json!({
            "metadata": {"name": "big-1", "namespace": "default", "labels": {"kubernetes.io/service-name": "big"}},
            "addressType": "IPv4", "endpoints": endpoints}))
        .unwrap();
        Zone::build("cluster.local", 5, [&svc, &big], [&slice])
    }

    fn query(name: &str, qtype: RecordType, edns: Option<u16>) -> Vec<u8> {
        let mut m = Message::new(4242, MessageType::Query, OpCode::Query);
        m.metadata.recursion_desired = true;
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
        if let Some(payload) = edns {
            let mut e = Edns::new();
            e.set_max_payload(payload);
            m.set_edns(e);
        }
        m.to_vec().unwrap()
    }

    fn reply_of(h: Handled) -> Message {
        match h {
            Handled::Reply(bytes) => Message::from_vec(&bytes).unwrap(),
            other => panic!("no reply: {other:?}"),
        }
    }

    #[test]
    fn cluster_names_are_answered_authoritatively_with_the_request_id() {
        let z = zone();
        let r = reply_of(handle(
            &z,
            &query("kubia.default.svc.cluster.local.", RecordType::A, None),
            Transport::Udp,
        ));
        assert_eq!(r.metadata.id, 4242);
        assert_eq!(r.metadata.message_type, MessageType::Response);
        assert!(r.metadata.authoritative && r.metadata.recursion_desired);
        assert_eq!(r.metadata.response_code, ResponseCode::NoError);
        assert_eq!(r.answers.len(), 1);
        assert_eq!(r.queries.len(), 1);
    }

    #[test]
    fn negative_answers_carry_the_soa() {
        let z = zone();
        let nx = reply_of(handle(
            &z,
            &query("nope.default.svc.cluster.local.", RecordType::A, None),
            Transport::Udp,
        ));
        assert_eq!(nx.metadata.response_code, ResponseCode::NXDomain);
        assert!(nx.answers.is_empty());
        assert_eq!(nx.authorities.len(), 1);
        assert_eq!(nx.authorities[0].record_type(), RecordType::SOA);
        let nodata = reply_of(handle(
            &z,
            &query("kubia.default.svc.cluster.local.", RecordType::AAAA, None),
            Transport::Udp,
        ));
        assert_eq!(nodata.metadata.response_code, ResponseCode::NoError);
        assert!(nodata.answers.is_empty());
        assert_eq!(nodata.authorities[0].record_type(), RecordType::SOA);
    }

    #[test]
    fn large_answers_are_truncated_over_udp_and_whole_over_tcp() {
        let z = zone();
        let name = "big.default.svc.cluster.local.";
        let udp = reply_of(handle(
            &z,
            &query(name, RecordType::A, None),
            Transport::Udp,
        ));
        assert!(udp.metadata.truncation && udp.answers.is_empty());
        let edns = reply_of(handle(
            &z,
            &query(name, RecordType::A, Some(4096)),
            Transport::Udp,
        ));
        assert!(
            edns.metadata.truncation,
            "100 records do not fit 1232 bytes either"
        );
        assert!(edns.edns.is_some(), "an EDNS request gets EDNS back");
        let tcp = reply_of(handle(
            &z,
            &query(name, RecordType::A, None),
            Transport::Tcp,
        ));
        assert!(!tcp.metadata.truncation);
        assert_eq!(tcp.answers.len(), 100);
    }

    #[test]
    fn bad_requests_get_errors_or_nothing() {
        let z = zone();
        // Garbage with a whole header: FORMERR echoing its id.
        let mut garbage = vec![0x12, 0x34];
        garbage.extend([0xff; 30]);
        let r = reply_of(handle(&z, &garbage, Transport::Udp));
        assert_eq!(r.metadata.id, 0x1234);
        assert_eq!(r.metadata.response_code, ResponseCode::FormErr);
        assert!(matches!(
            handle(&z, &[1, 2, 3], Transport::Udp),
            Handled::Drop
        ));
        // Zone transfers are refused.
        let axfr = reply_of(handle(
            &z,
            &query("cluster.local.", RecordType::AXFR, None),
            Transport::Tcp,
        ));
        assert_eq!(axfr.metadata.response_code, ResponseCode::Refused);
        // A response is never answered.
        let mut response = Message::from_vec(&query(
            "kubia.default.svc.cluster.local.",
            RecordType::A,
            None,
        ))
        .unwrap();
        response.metadata.message_type = MessageType::Response;
        assert!(matches!(
            handle(&z, &response.to_vec().unwrap(), Transport::Udp),
            Handled::Drop
        ));
        // Another opcode: not implemented.
        let mut notify = Message::new(7, MessageType::Query, OpCode::Notify);
        notify.add_query(Query::query(
            Name::from_ascii("cluster.local.").unwrap(),
            RecordType::SOA,
        ));
        let r = reply_of(handle(&z, &notify.to_vec().unwrap(), Transport::Udp));
        assert_eq!(r.metadata.response_code, ResponseCode::NotImp);
        // Two questions: FORMERR.
        let mut two = Message::new(8, MessageType::Query, OpCode::Query);
        for n in ["a.cluster.local.", "b.cluster.local."] {
            two.add_query(Query::query(Name::from_ascii(n).unwrap(), RecordType::A));
        }
        let r = reply_of(handle(&z, &two.to_vec().unwrap(), Transport::Udp));
        assert_eq!(r.metadata.response_code, ResponseCode::FormErr);
    }

    #[test]
    fn other_names_are_forwarded_and_fail_as_servfail() {
        let z = zone();
        let Handled::Forward(request) = handle(
            &z,
            &query("example.com.", RecordType::A, None),
            Transport::Udp,
        ) else {
            panic!("not forwarded")
        };
        let r = reply_of(server_failure(&request, Transport::Udp));
        assert_eq!(r.metadata.id, 4242);
        assert_eq!(r.metadata.response_code, ResponseCode::ServFail);
    }
}
