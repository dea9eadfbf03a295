// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* Programs the module's kfunc filter must REJECT at load time (VM tier, one
 * program loaded at a time): the deferral kfunc in sock_addr hooks other than
 * connect, the
 * route kfunc outside kmesh_l7_ops, and the allocating parser in a tracing
 * program (which may run in NMI context). */
#include "common.h"
#include "kfuncs.h"
#include <bpf/bpf_tracing.h>

SEC("cgroup/bind4")
int filter_defer_from_bind4(struct bpf_sock_addr *ctx)
{
	kmesh_defer_connect(ctx, 1);
	return SOCK_ALLOW;
}

SEC("cgroup/sendmsg4")
int filter_defer_from_sendmsg4(struct bpf_sock_addr *ctx)
{
	kmesh_defer_connect(ctx, 1);
	return SOCK_ALLOW;
}

SEC("fentry/bpf_fentry_test1")
int BPF_PROG(filter_parse_from_tracing, int a)
{
	char buf[16] = "GET / HTTP/1.1\r\n";
	struct kmesh_http_req *req = bpf_kmesh_http_parse(buf, sizeof(buf));

	if (req)
		bpf_kmesh_http_release(req);
	return 0;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
