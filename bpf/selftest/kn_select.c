// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* BPF_PROG_RUN shim over kernel-native endpoint selection (lib/kn.h):
 * action -> cluster -> km_lb_pick over the cluster's VIP-less L4 service, the
 * code the router and kn_connect run. It needs no kmesh.ko, so the host tier
 * tests the lowering of clusters into the L4 maps with it. */
#include "common.h"
#include "kn.h"

struct kn_select_args {
	__u32 gen;       /* in */
	__u32 action;    /* in: action id (0: use cluster) */
	__u32 cluster;   /* in: cluster id when action is 0 */
	__u32 fam_flags; /* in: KM_FAM_* | KN_PICK_V4_OK */
	__s32 verdict;   /* out: kn_cluster_pick's result */
	__u32 cid;       /* out: the cluster picked */
	__u32 workload_id;
	__u32 addr[4];   /* out: v4 mapped for IPv4 */
	__u16 port;      /* out: network order */
	__u16 pad;
};

SEC("syscall")
int kn_select(struct kn_select_args *a)
{
	struct km_pick pick = {};
	struct kn_cluster cl;
	__u32 cid = a->cluster;

	if (a->action)
		cid = kn_action_cluster(a->gen, a->action, bpf_get_prandom_u32());
	a->cid = cid;
	a->verdict = kn_cluster_pick(a->gen, cid, a->fam_flags, &cl, &pick);
	a->workload_id = pick.workload_id;
	a->addr[0] = pick.addr[0];
	a->addr[1] = pick.addr[1];
	a->addr[2] = pick.addr[2];
	a->addr[3] = pick.addr[3];
	a->port = pick.port;
	return 0;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
