// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* BPF_PROG_RUN shim over the connect programs' selection code (lib/lb.h):
 * cgroup sock_addr programs have no test_run, so unit tests drive the same
 * inline functions through a syscall program, with the random input chosen by
 * the test. The maps are the dataplane's own definitions (lib/maps.h). */
#include "common.h"
#include "maps.h"
#include "lb.h"

struct lb_test_args {
	__u32 addr[4];   /* in: destination, v4 mapped */
	__u16 port;      /* in: network order */
	__u8 family;     /* in: KM_FAM_V4 or KM_FAM_V6 */
	__u8 kernel_rnd; /* in: 1 = use bpf_get_prandom_u32() as the datapath does */
	__u32 rnd;       /* in: random input (when kernel_rnd is 0) */
	__s32 verdict;   /* out: enum km_verdict */
	__u32 svc_id;    /* out */
	__u32 workload_id;
	__u32 out_addr[4];
	__u16 out_port;  /* network order */
	__u8 tier;
	__u8 pad2;
};

SEC("syscall")
int lb_select(struct lb_test_args *args)
{
	struct km_pick pick = {};
	__u32 addr[4], svc, rnd;

	addr[0] = args->addr[0];
	addr[1] = args->addr[1];
	addr[2] = args->addr[2];
	addr[3] = args->addr[3];
	svc = km_frontend_lookup(addr, args->port);
	if (!svc) {
		args->verdict = KM_PASS;
		return 0;
	}
	rnd = args->kernel_rnd ? bpf_get_prandom_u32() : args->rnd;
	/* A constant family per call, as in the connect programs (older
	 * verifiers cannot bound a runtime family index). */
	if (args->family == KM_FAM_V6)
		args->verdict = km_lb_pick(svc, args->port, KM_FAM_V6, rnd, &pick);
	else
		args->verdict = km_lb_pick(svc, args->port, KM_FAM_V4, rnd, &pick);
	args->svc_id = svc;
	args->workload_id = pick.workload_id;
	args->out_addr[0] = pick.addr[0];
	args->out_addr[1] = pick.addr[1];
	args->out_addr[2] = pick.addr[2];
	args->out_addr[3] = pick.addr[3];
	args->out_port = pick.port;
	args->tier = pick.tier;
	return 0;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
