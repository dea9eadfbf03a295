/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Address helpers: one 16-byte form (four network-order words) for both
 * families, IPv4 stored IPv4-mapped (::ffff:a.b.c.d). */
#ifndef KMESH_BPF_ADDR_H
#define KMESH_BPF_ADDR_H

/* ::ffff:0:0/96 prefix word (network order) */
#define KM_V4MAPPED_W2 bpf_htonl(0x0000ffff)

static __always_inline void km_addr_from_v4(__u32 out[4], __u32 ip4)
{
	out[0] = 0;
	out[1] = 0;
	out[2] = KM_V4MAPPED_W2;
	out[3] = ip4;
}

static __always_inline int km_addr_is_v4mapped(const __u32 a[4])
{
	return a[0] == 0 && a[1] == 0 && a[2] == KM_V4MAPPED_W2;
}

static __always_inline int km_addr_eq(const __u32 a[4], const __u32 b[4])
{
	return a[0] == b[0] && a[1] == b[1] && a[2] == b[2] && a[3] == b[3];
}

static __always_inline void km_addr_copy(__u32 dst[4], const __u32 src[4])
{
	dst[0] = src[0];
	dst[1] = src[1];
	dst[2] = src[2];
	dst[3] = src[3];
}

/* Loopback (127/8 mapped, or ::1): peers share one namespace. */
static __always_inline int km_addr_is_loopback(const __u32 a[4])
{
	if (km_addr_is_v4mapped(a))
		return (bpf_ntohl(a[3]) >> 24) == 127;
	return a[0] == 0 && a[1] == 0 && a[2] == 0 && a[3] == bpf_htonl(1);
}

#endif
