// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* cgroup/sock_create: marks TCP sockets created by enrolled processes in
 * socket-local storage. The mark is what sockops sees for the server side:
 * a listener's storage is cloned into every socket it accepts (BPF_F_CLONE),
 * and sockops runs in softirq, where the owning process is unknown. */
#include "common.h"
#include "maps.h"
#include "enrol.h"
#include "sock.h"

SEC("cgroup/sock_create")
int km_sock_create(struct bpf_sock *sk)
{
	__u32 wl;

	if (sk->type != SOCK_STREAM)
		return 1;
	if (km_enrolled_current(sk, &wl))
		km_sock_enrol(sk, wl);
	return 1;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
