// natOutgoing without netfilter: source NAT for pod traffic leaving the cluster, done by two tc programs on the
// node's uplink (egress rewrites pod -> node address and port, ingress rewrites replies back). With it a node needs
// no conntrack or nat hooks at all when policy enforcement is off, so pod-to-pod traffic pays nothing for
// masquerading (as Cilium's BPF masquerade and Calico's BPF dataplane do).
//
// State lives in two LRU hashes pinned in bpffs, so an agent restart (or upgrade) keeps established connections.
// IPv4 only, like the nftables path. Not translated (passed as they are): IP fragments after the first, ICMP other
// than echo, and ICMP errors about masqueraded flows.
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

struct endpoint_v4 {
	__u32 addr;
	__u16 port;
	__u16 pad;
};

struct uplink {
	__u32 addr; // the address replies come back to: the uplink's primary IPv4 address
};

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

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 64);
	__type(key, __u32); // ifindex
	__type(value, struct uplink);
} uplinks SEC(".maps");

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

struct l4_offsets {
	__u32 csum;   // where the L4 checksum is
	__u32 port;   // where the port (or ICMP echo id) to rewrite is
	__u64 flags;  // bpf_l4_csum_replace flags for an address change
};

// The first 8 bytes of the L4 header (ports, or ICMP type/code/checksum/id), pulled into the linear part if they
// are not there yet. The check and the access use the same pointer, as the verifier needs.
static __always_inline void *l4_header(struct __sk_buff *skb, __u32 l4)
{
	void *h = (void *)(long)skb->data + l4;
	if (h + 8 <= (void *)(long)skb->data_end)
		return h;
	if (bpf_skb_pull_data(skb, l4 + 8))
		return NULL;
	h = (void *)(long)skb->data + l4;
	return h + 8 <= (void *)(long)skb->data_end ? h : NULL;
}

// Reads the IPv4 header and the ports (or the echo id) of the packet; 0 when it is not something we translate.
static __always_inline int parse(struct __sk_buff *skb, struct flow_v4 *flow, struct l4_offsets *off, int ingress)
{
	void *data = (void *)(long)skb->data, *end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > end || eth->h_proto != bpf_htons(ETH_P_IP))
		return 0;
	struct iphdr *ip = (void *)(eth + 1);
	if ((void *)(ip + 1) > end || ip->ihl < 5)
		return 0;
	if (ip->frag_off & bpf_htons(0x1fff)) // a later fragment has no L4 header
		return 0;
	__u32 l4 = sizeof(*eth) + ip->ihl * 4;
	flow->saddr = ip->saddr;
	flow->daddr = ip->daddr;
	// Pulling more of the packet in (below) invalidates every packet pointer: only locals from here on.
	__u8 proto = flow->proto = ip->protocol;
	if (proto == IPPROTO_TCP || proto == IPPROTO_UDP) {
		__u16 *ports = l4_header(skb, l4);
		if (!ports)
			return 0;
		flow->sport = ports[0];
		flow->dport = ports[1];
		off->port = ingress ? l4 + 2 : l4;
		if (proto == IPPROTO_TCP) {
			off->csum = l4 + offsetof(struct tcphdr, check);
			off->flags = BPF_F_PSEUDO_HDR;
		} else {
			off->csum = l4 + offsetof(struct udphdr, check);
			off->flags = BPF_F_PSEUDO_HDR | BPF_F_MARK_MANGLED_0; // a zero UDP checksum means none: keep it zero
		}
		return 1;
	}
	if (proto == IPPROTO_ICMP) {
		struct icmp_echo *icmp = l4_header(skb, l4);
		if (!icmp)
			return 0;
		if (icmp->type != (ingress ? ICMP_ECHOREPLY : ICMP_ECHO))
			return 0;
		// The echo id plays the pod-side port; the remote side has none.
		flow->sport = ingress ? 0 : icmp->id;
		flow->dport = ingress ? icmp->id : 0;
		off->port = l4 + offsetof(struct icmp_echo, id);
		off->csum = l4 + offsetof(struct icmp_echo, checksum);
		off->flags = 0; // ICMP has no pseudo-header
		return 1;
	}
	return 0;
}

// Rewrites one address (source or destination) and one port/id, fixing the IP and L4 checksums incrementally.
static __always_inline int rewrite(struct __sk_buff *skb, const struct l4_offsets *off, __u32 addr_off, __u32 old_addr,
				   __u32 new_addr, __u16 old_port, __u16 new_port)
{
	__u64 mangled0 = off->flags & BPF_F_MARK_MANGLED_0;
	if (bpf_l3_csum_replace(skb, sizeof(struct ethhdr) + offsetof(struct iphdr, check), old_addr, new_addr, 4))
		return -1;
	if (off->flags & BPF_F_PSEUDO_HDR &&
	    bpf_l4_csum_replace(skb, off->csum, old_addr, new_addr, off->flags | 4))
		return -1;
	if (old_port != new_port && bpf_l4_csum_replace(skb, off->csum, old_port, new_port, mangled0 | 2))
		return -1;
	if (bpf_skb_store_bytes(skb, addr_off, &new_addr, 4, 0))
		return -1;
	if (old_port != new_port && bpf_skb_store_bytes(skb, off->port, &new_port, 2, 0))
		return -1;
	return 0;
}

static __always_inline int in_prefixes(void *map, __u32 addr)
{
	struct lpm_v4 key = { .prefixlen = 32, .addr = addr };
	return bpf_map_lookup_elem(map, &key) != NULL;
}

// A node port for a new pod flow: the pod's own port when it is in our range and free towards that remote
// endpoint, else a pseudo-random start probed linearly. The reverse entry is claimed first (BPF_NOEXIST), so two
// flows can never share a node port towards the same remote endpoint.
static __always_inline int allocate(const struct flow_v4 *flow, __u32 node_addr, struct endpoint_v4 *nat)
{
	const __u32 range = NAT_PORT_MAX - NAT_PORT_MIN + 1;
	__u32 own = bpf_ntohs(flow->sport);
	__u32 start = own >= NAT_PORT_MIN ? own - NAT_PORT_MIN : bpf_get_prandom_u32() % range;
	struct endpoint_v4 pod = { .addr = flow->saddr, .port = flow->sport };
	struct flow_v4 reply = { .saddr = flow->daddr, .daddr = node_addr, .sport = flow->dport, .proto = flow->proto };
	for (__u32 i = 0; i < NAT_PORT_TRIES; i++) {
		reply.dport = bpf_htons(NAT_PORT_MIN + (start + i) % range);
		if (bpf_map_update_elem(&rnat_v4, &reply, &pod, BPF_NOEXIST) == 0) {
			nat->addr = node_addr;
			nat->port = reply.dport;
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
	}
	return -1;
}

SEC("tc")
int weft_masq_egress(struct __sk_buff *skb)
{
	__u32 ifindex = skb->ifindex;
	struct uplink *up = bpf_map_lookup_elem(&uplinks, &ifindex);
	if (!up)
		return TC_ACT_OK;
	struct flow_v4 flow = {};
	struct l4_offsets off = {};
	if (!parse(skb, &flow, &off, 0))
		return TC_ACT_OK;
	// The node's own traffic (tunnels included) first: it is most of what leaves and needs no lookup.
	if (flow.saddr == up->addr || !in_prefixes(&masq_sources, flow.saddr) || in_prefixes(&cluster, flow.daddr))
		return TC_ACT_OK;
	struct endpoint_v4 nat;
	struct endpoint_v4 *known = bpf_map_lookup_elem(&snat_v4, &flow);
	if (known && known->addr == up->addr) {
		nat = *known;
		// The LRU may have dropped the reply side alone: put it back, or replies would stop here.
		struct flow_v4 reply = { .saddr = flow.daddr, .daddr = nat.addr, .sport = flow.dport, .dport = nat.port, .proto = flow.proto };
		if (!bpf_map_lookup_elem(&rnat_v4, &reply)) {
			struct endpoint_v4 pod = { .addr = flow.saddr, .port = flow.sport };
			bpf_map_update_elem(&rnat_v4, &reply, &pod, BPF_ANY);
		}
	} else {
		if (known) // the uplink's address changed: start over with the new one
			bpf_map_delete_elem(&snat_v4, &flow);
		if (allocate(&flow, up->addr, &nat))
			return TC_ACT_SHOT; // no free port towards this endpoint: drop rather than leak a pod address
	}
	if (rewrite(skb, &off, sizeof(struct ethhdr) + offsetof(struct iphdr, saddr), flow.saddr, nat.addr, flow.sport, nat.port))
		return TC_ACT_SHOT;
	return TC_ACT_OK;
}

SEC("tc")
int weft_masq_ingress(struct __sk_buff *skb)
{
	__u32 ifindex = skb->ifindex;
	struct uplink *up = bpf_map_lookup_elem(&uplinks, &ifindex);
	if (!up)
		return TC_ACT_OK;
	struct flow_v4 flow = {};
	struct l4_offsets off = {};
	if (!parse(skb, &flow, &off, 1) || flow.daddr != up->addr)
		return TC_ACT_OK;
	__u16 port = bpf_ntohs(flow.dport);
	if (port < NAT_PORT_MIN) // NAT_PORT_MAX is the top of the range
		return TC_ACT_OK;
	struct endpoint_v4 *pod = bpf_map_lookup_elem(&rnat_v4, &flow);
	if (!pod)
		return TC_ACT_OK;
	struct endpoint_v4 to = *pod;
	if (rewrite(skb, &off, sizeof(struct ethhdr) + offsetof(struct iphdr, daddr), flow.daddr, to.addr, flow.dport, to.port))
		return TC_ACT_SHOT;
	return TC_ACT_OK;
}

char LICENSE[] SEC("license") = "Dual MIT/GPL";
