// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* BPF_PROG_RUN shim over the waypoint header builder (lib/waypoint.h):
 * sk_msg programs have no test_run, so unit tests run the same inline code
 * that sk_msg uses through a syscall program and compare the bytes with an
 * independent Go encoder and parser. */
#include "common.h"
#include "maps.h"
#include "waypoint.h"

struct wp_header_args {
	__u32 src[4];  /* in: client address, v4 mapped */
	__u32 dst[4];  /* in: original destination, v4 mapped */
	__u16 sport;   /* in: network order */
	__u16 dport;   /* in: network order */
	__u32 tlv;     /* in: 1 = Kmesh TLV, 0 = PROXY v2 */
	__u32 len;     /* out */
	__u8 buf[KM_WP_HDR_MAX]; /* out */
};

SEC("syscall")
int wp_header(struct wp_header_args *args)
{
	__u8 buf[KM_WP_HDR_MAX] __attribute__((aligned(8))) = {};
	__u32 src[4], dst[4];

	src[0] = args->src[0];
	src[1] = args->src[1];
	src[2] = args->src[2];
	src[3] = args->src[3];
	dst[0] = args->dst[0];
	dst[1] = args->dst[1];
	dst[2] = args->dst[2];
	dst[3] = args->dst[3];
	args->len = km_wp_header(buf, src, args->sport, dst, args->dport, args->tlv);
	__builtin_memcpy(args->buf, buf, KM_WP_HDR_MAX);
	return 0;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
