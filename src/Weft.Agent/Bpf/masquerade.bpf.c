// natOutgoing without netfilter: source NAT for pod traffic leaving the cluster, done by two tc programs on the
// node's uplink (egress rewrites pod -> node address and port, ingress rewrites replies back). With it a node needs
// no conntrack or nat hooks at all when policy enforcement is off, so pod-to-pod traffic pays nothing for
// masquerading (as Cilium's BPF masquerade and Calico's BPF dataplane do).
//
// State lives in LRU hashes pinned in bpffs, so an agent restart (or upgrade) keeps established connections. A
// mapping is created only by a connection's first packet (TCP SYN, UDP, ICMP echo request) and expires when idle
// (TCP 6 h, or 10 s after a FIN or RST; UDP 60 s; ICMP 30 s, as Cilium's defaults); an expired mapping's port is
// taken back when a new flow needs it. Fragments follow their first fragment's translation. IPv4 only, like the
// nftables path. Not translated: ICMP other than echo, including ICMP errors about masqueraded flows.
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/pkt_cls.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <stddef.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

// Above the kernel's default ephemeral range (32768-60999), so a node's own connections never collide with ours.
#define NAT_PORT_MIN 61000
#define NAT_PORT_MAX 65535
#define NAT_PORT_TRIES 32
#define SECOND 1000000000ULL
#define TCP_IDLE (6 * 3600 * SECOND)
#define TCP_CLOSING_IDLE (10 * SECOND)
#define UDP_IDLE (60 * SECOND)
#define ICMP_IDLE (30 * SECOND)
#define IP_MF 0x2000
#define IP_OFFSET 0x1fff
#define TCP_FIN 0x01
#define TCP_SYN 0x02
#define TCP_RST 0x04
#define TCP_ACK 0x10

// linux/icmp.h pulls in libc headers that a BPF target cannot build; the echo header is all we need.
#define ICMP_ECHOREPLY 0
#define ICMP_ECHO 8
struct icmp_echo {
	__u8 type;
	__u8 code;
	__u16 checksum;
	__u16 id;
	__u16 sequence;
};

struct lpm_v4 {
	__u32 prefixlen;
	__u32 addr;
};

// One direction of a flow as it appears on the wire: egress pod->remote, ingress remote->node.
struct flow_v4 {
	__u32 saddr;
	__u32 daddr;
	__u16 sport;
	__u16 dport;
	__u8 proto;
	__u8 pad[3];
};

// One side of a mapping, and when it last carried a packet.
struct endpoint_v4 {
	__u32 addr;
	__u16 port;
	__u8 closing; // a FIN or RST was seen: the short idle timeout applies
	__u8 pad;
	__u64 seen;   // bpf_ktime_get_ns of the last packet
};

// Later fragments carry no ports: they follow the translation their first fragment got (IP id keyed).
struct frag_v4 {
	__u32 saddr;
	__u32 daddr;
	__u16 id;
	__u8 proto;
	__u8 pad;
};

// Set by the loader before the programs load (.rodata, so the verifier folds it into the code): the interface the
// programs sit on and the address replies come back to, its primary IPv4 address. No map lookup per packet.
const volatile struct {
	__u32 addr;
	__u32 ifindex;
} uplink = {};

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 1024);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct lpm_v4);
	__type(value, __u8);
} masq_sources SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 1024);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct lpm_v4);
	__type(value, __u8);
} cluster SEC(".maps");

// pod flow -> the node address and port it was given
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct flow_v4);
	__type(value, struct endpoint_v4);
} snat_v4 SEC(".maps");

// reply flow (remote -> node address:port) -> the pod endpoint it belongs to
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct flow_v4);
	__type(value, struct endpoint_v4);
} rnat_v4 SEC(".maps");

// first fragment's (source, destination, id, protocol) as sent -> the address it was rewritten to
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 4096);
	__type(key, struct frag_v4);
	__type(value, __u32);
} frags_v4 SEC(".maps");

struct packet {
	struct flow_v4 flow;
	__u32 csum_off;    // where the L4 checksum is
	__u32 port_off;    // where the port (or ICMP echo id) to rewrite is
	__u64 csum_flags;  // bpf_l4_csum_replace flags for an address change
	__u16 ip_id;
	__u8 fragment;     // 0: whole packet, FIRST_FRAGMENT, LATER_FRAGMENT
	__u8 tcp_flags;
};
#define FIRST_FRAGMENT 1
#define LATER_FRAGMENT 2

// The first len bytes of the L4 header, pulled into the linear part if they are not there yet. The check and the
// access use the same pointer, as the verifier needs.
static __always_inline void *l4_header(struct __sk_buff *skb, __u32 l4, const __u32 len)
{
	void *h = (void *)(long)skb->data + l4;
	if (h + len <= (void *)(long)skb->data_end)
		return h;
	if (bpf_skb_pull_data(skb, l4 + len))
		return NULL;
	h = (void *)(long)skb->data + l4;
	return h + len <= (void *)(long)skb->data_end ? h : NULL;
}

// Reads the IPv4 header and the ports (or the echo id); 0 when it is nothing we translate. A later fragment comes
// back with addresses, protocol and IP id only.
static __always_inline int parse(struct __sk_buff *skb, struct packet *pkt, int ingress)
{
	void *data = (void *)(long)skb->data, *end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > end || eth->h_proto != bpf_htons(ETH_P_IP))
		return 0;
	struct iphdr *ip = (void *)(eth + 1);
	if ((void *)(ip + 1) > end || ip->ihl < 5)
		return 0;
	struct flow_v4 *flow = &pkt->flow;
	flow->saddr = ip->saddr;
	flow->daddr = ip->daddr;
	pkt->ip_id = ip->id;
	__u16 frag = bpf_ntohs(ip->frag_off);
	pkt->fragment = frag & IP_OFFSET ? LATER_FRAGMENT : frag & IP_MF ? FIRST_FRAGMENT : 0;
	__u32 l4 = sizeof(*eth) + ip->ihl * 4;
	// Pulling more of the packet in (below) invalidates every packet pointer: only locals from here on.
	__u8 proto = flow->proto = ip->protocol;
	if (pkt->fragment == LATER_FRAGMENT)
		return proto == IPPROTO_TCP || proto == IPPROTO_UDP || proto == IPPROTO_ICMP;
	if (proto == IPPROTO_TCP) {
		struct tcphdr *tcp = l4_header(skb, l4, sizeof(struct tcphdr));
		if (!tcp)
			return 0;
		flow->sport = tcp->source;
		flow->dport = tcp->dest;
		pkt->tcp_flags = ((__u8 *)tcp)[13];
		pkt->port_off = ingress ? l4 + offsetof(struct tcphdr, dest) : l4 + offsetof(struct tcphdr, source);
		pkt->csum_off = l4 + offsetof(struct tcphdr, check);
		pkt->csum_flags = BPF_F_PSEUDO_HDR;
		return 1;
	}
	if (proto == IPPROTO_UDP) {
		struct udphdr *udp = l4_header(skb, l4, sizeof(struct udphdr));
		if (!udp)
			return 0;
		flow->sport = udp->source;
		flow->dport = udp->dest;
		pkt->port_off = ingress ? l4 + offsetof(struct udphdr, dest) : l4 + offsetof(struct udphdr, source);
		pkt->csum_off = l4 + offsetof(struct udphdr, check);
		pkt->csum_flags = BPF_F_PSEUDO_HDR | BPF_F_MARK_MANGLED_0; // a zero UDP checksum means none: keep it zero
		return 1;
	}
	if (proto == IPPROTO_ICMP) {
		struct icmp_echo *icmp = l4_header(skb, l4, sizeof(struct icmp_echo));
		if (!icmp || icmp->type != (ingress ? ICMP_ECHOREPLY : ICMP_ECHO))
			return 0;
		// The echo id plays the pod-side port; the remote side has none.
		flow->sport = ingress ? 0 : icmp->id;
		flow->dport = ingress ? icmp->id : 0;
		pkt->port_off = l4 + offsetof(struct icmp_echo, id);
		pkt->csum_off = l4 + offsetof(struct icmp_echo, checksum);
		pkt->csum_flags = 0; // ICMP has no pseudo-header
		return 1;
	}
	return 0;
}

// Rewrites one address (source or destination) and, unless this is a later fragment, one port/id, fixing the IP and
// L4 checksums incrementally.
static __always_inline int rewrite(struct __sk_buff *skb, const struct packet *pkt, __u32 addr_off, __u32 old_addr,
				   __u32 new_addr, __u16 old_port, __u16 new_port)
{
	if (bpf_l3_csum_replace(skb, sizeof(struct ethhdr) + offsetof(struct iphdr, check), old_addr, new_addr, 4))
		return -1;
	if (pkt->fragment != LATER_FRAGMENT) {
		__u64 mangled0 = pkt->csum_flags & BPF_F_MARK_MANGLED_0;
		if (pkt->csum_flags & BPF_F_PSEUDO_HDR &&
		    bpf_l4_csum_replace(skb, pkt->csum_off, old_addr, new_addr, pkt->csum_flags | 4))
			return -1;
		if (old_port != new_port && bpf_l4_csum_replace(skb, pkt->csum_off, old_port, new_port, mangled0 | 2))
			return -1;
	}
	if (bpf_skb_store_bytes(skb, addr_off, &new_addr, 4, 0))
		return -1;
	if (pkt->fragment != LATER_FRAGMENT && old_port != new_port && bpf_skb_store_bytes(skb, pkt->port_off, &new_port, 2, 0))
		return -1;
	return 0;
}

static __always_inline int in_prefixes(void *map, __u32 addr)
{
	struct lpm_v4 key = { .prefixlen = 32, .addr = addr };
	return bpf_map_lookup_elem(map, &key) != NULL;
}

static __always_inline void touch(struct endpoint_v4 *e, const struct packet *pkt, __u64 now)
{
	e->seen = now;
	if (pkt->tcp_flags & (TCP_FIN | TCP_RST))
		e->closing = 1;
}

static __always_inline int expired(const struct endpoint_v4 *e, __u8 proto, __u64 now)
{
	__u64 idle = proto == IPPROTO_TCP ? (e->closing ? TCP_CLOSING_IDLE : TCP_IDLE) : proto == IPPROTO_UDP ? UDP_IDLE : ICMP_IDLE;
	return now - e->seen > idle;
}

// A node port for a new pod flow: the pod's own port when it is in our range and free towards that remote
// endpoint, else a pseudo-random start probed linearly. The reverse entry is claimed first (BPF_NOEXIST), so two
// live flows never share a node port towards the same remote endpoint; an expired one gives its port up.
static __always_inline int allocate(const struct packet *pkt, __u32 node_addr, struct endpoint_v4 *nat, __u64 now)
{
	const struct flow_v4 *flow = &pkt->flow;
	const __u32 range = NAT_PORT_MAX - NAT_PORT_MIN + 1;
	__u32 own = bpf_ntohs(flow->sport);
	__u32 start = own >= NAT_PORT_MIN ? own - NAT_PORT_MIN : bpf_get_prandom_u32() % range;
	struct endpoint_v4 pod = { .addr = flow->saddr, .port = flow->sport, .seen = now };
	struct flow_v4 reply = { .saddr = flow->daddr, .daddr = node_addr, .sport = flow->dport, .proto = flow->proto };
	for (__u32 i = 0; i < NAT_PORT_TRIES; i++) {
		reply.dport = bpf_htons(NAT_PORT_MIN + (start + i) % range);
		if (bpf_map_update_elem(&rnat_v4, &reply, &pod, BPF_NOEXIST)) {
			struct endpoint_v4 *old = bpf_map_lookup_elem(&rnat_v4, &reply);
			if (!old || !expired(old, flow->proto, now))
				continue;
			// Take the port back from an idle flow: its own mapping goes, so it cannot come back on this port.
			struct flow_v4 owner = { .saddr = old->addr, .daddr = flow->daddr, .sport = old->port, .dport = flow->dport, .proto = flow->proto };
			bpf_map_delete_elem(&snat_v4, &owner);
			if (bpf_map_update_elem(&rnat_v4, &reply, &pod, BPF_ANY))
				continue;
		}
		nat->addr = node_addr;
		nat->port = reply.dport;
		nat->closing = 0;
		nat->pad = 0;
		nat->seen = now;
		if (bpf_map_update_elem(&snat_v4, flow, nat, BPF_NOEXIST) == 0)
			return 0;
		// Another CPU translated the same new flow first: use its port, give ours back.
		bpf_map_delete_elem(&rnat_v4, &reply);
		struct endpoint_v4 *won = bpf_map_lookup_elem(&snat_v4, flow);
		if (!won)
			return -1;
		*nat = *won;
		return 0;
	}
	return -1;
}

// Does this packet open a flow (and so may create a mapping)? A TCP segment without SYN that has no mapping belongs
// to a connection that came in from outside (to a routable pod address): it must leave untranslated.
static __always_inline int opens_flow(const struct packet *pkt)
{
	return pkt->flow.proto != IPPROTO_TCP || (pkt->tcp_flags & (TCP_SYN | TCP_ACK)) == TCP_SYN;
}

// Translates the packet; for a first fragment, also remembers the address its later fragments are to get.
static __always_inline int translate(struct __sk_buff *skb, const struct packet *pkt, __u32 addr_off, __u32 old_addr,
				     __u32 new_addr, __u16 old_port, __u16 new_port)
{
	if (rewrite(skb, pkt, addr_off, old_addr, new_addr, old_port, new_port))
		return TC_ACT_SHOT;
	if (pkt->fragment == FIRST_FRAGMENT) {
		struct frag_v4 key = { .saddr = pkt->flow.saddr, .daddr = pkt->flow.daddr, .id = pkt->ip_id, .proto = pkt->flow.proto };
		bpf_map_update_elem(&frags_v4, &key, &new_addr, BPF_ANY);
	}
	return TC_ACT_OK;
}

// A later fragment gets the address its first fragment got; one whose first fragment was not translated gets
// `unknown` as its verdict.
static __always_inline int follow_first_fragment(struct __sk_buff *skb, const struct packet *pkt, __u32 addr_off, __u32 old_addr, int unknown)
{
	struct frag_v4 key = { .saddr = pkt->flow.saddr, .daddr = pkt->flow.daddr, .id = pkt->ip_id, .proto = pkt->flow.proto };
	__u32 *to = bpf_map_lookup_elem(&frags_v4, &key);
	if (!to)
		return unknown;
	__u32 new_addr = *to;
	return rewrite(skb, pkt, addr_off, old_addr, new_addr, 0, 0) ? TC_ACT_SHOT : TC_ACT_OK;
}

SEC("tc")
int weft_masq_egress(struct __sk_buff *skb)
{
	if (skb->ifindex != uplink.ifindex)
		return TC_ACT_OK;
	const __u32 node_addr = uplink.addr;
	struct packet pkt = {};
	if (!parse(skb, &pkt, 0))
		return TC_ACT_OK;
	struct flow_v4 *flow = &pkt.flow;
	// The node's own traffic (tunnels included) first: it is most of what leaves and needs no lookup.
	if (flow->saddr == node_addr || !in_prefixes(&masq_sources, flow->saddr) || in_prefixes(&cluster, flow->daddr))
		return TC_ACT_OK;
	const __u32 saddr_off = sizeof(struct ethhdr) + offsetof(struct iphdr, saddr);
	// A later fragment whose first was not seen (or came later) is dropped: never let a pod address out.
	if (pkt.fragment == LATER_FRAGMENT)
		return follow_first_fragment(skb, &pkt, saddr_off, flow->saddr, TC_ACT_SHOT);
	__u64 now = bpf_ktime_get_ns();
	struct endpoint_v4 nat;
	struct endpoint_v4 *known = bpf_map_lookup_elem(&snat_v4, flow);
	int mapped = 0;
	if (known && known->addr == node_addr) {
		nat = *known;
		// The reply side must still be ours: the LRU may have dropped it alone, and another flow may have taken
		// the port since. Put it back if it is free; start over if it is not.
		struct flow_v4 reply = { .saddr = flow->daddr, .daddr = nat.addr, .sport = flow->dport, .dport = nat.port, .proto = flow->proto };
		struct endpoint_v4 *back = bpf_map_lookup_elem(&rnat_v4, &reply);
		if (back && back->addr == flow->saddr && back->port == flow->sport) {
			touch(back, &pkt, now);
			mapped = 1;
		} else if (!back) {
			struct endpoint_v4 pod = { .addr = flow->saddr, .port = flow->sport, .seen = now };
			mapped = bpf_map_update_elem(&rnat_v4, &reply, &pod, BPF_NOEXIST) == 0;
		}
	}
	if (!mapped) {
		if (known) // stale: the uplink's address changed, or the port went to another flow
			bpf_map_delete_elem(&snat_v4, flow);
		if (!opens_flow(&pkt))
			return TC_ACT_OK;
		if (allocate(&pkt, node_addr, &nat, now))
			return TC_ACT_SHOT; // no free port towards this endpoint: drop rather than leak a pod address
	}
	return translate(skb, &pkt, saddr_off, flow->saddr, nat.addr, flow->sport, nat.port);
}

SEC("tc")
int weft_masq_ingress(struct __sk_buff *skb)
{
	if (skb->ifindex != uplink.ifindex)
		return TC_ACT_OK;
	const __u32 node_addr = uplink.addr;
	struct packet pkt = {};
	if (!parse(skb, &pkt, 1) || pkt.flow.daddr != node_addr)
		return TC_ACT_OK;
	struct flow_v4 *flow = &pkt.flow;
	const __u32 daddr_off = sizeof(struct ethhdr) + offsetof(struct iphdr, daddr);
	// A later fragment of no translated reply is the node's own.
	if (pkt.fragment == LATER_FRAGMENT)
		return follow_first_fragment(skb, &pkt, daddr_off, flow->daddr, TC_ACT_OK);
	if (bpf_ntohs(flow->dport) < NAT_PORT_MIN) // NAT_PORT_MAX is the top of the range
		return TC_ACT_OK;
	struct endpoint_v4 *pod = bpf_map_lookup_elem(&rnat_v4, flow);
	if (!pod)
		return TC_ACT_OK;
	touch(pod, &pkt, bpf_ktime_get_ns());
	struct endpoint_v4 to = *pod;
	return translate(skb, &pkt, daddr_off, flow->daddr, to.addr, flow->dport, to.port);
}

char LICENSE[] SEC("license") = "Dual MIT/GPL";
