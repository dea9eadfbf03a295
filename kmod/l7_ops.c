// SPDX-License-Identifier: GPL-2.0
/* struct_ops type "kmesh_l7_ops": the routing decision of a deferred connect
 * is a BPF program. At a socket's first send the module parses the first
 * bytes and calls ops->route(ctx, req); the program matches req with the
 * parser kfuncs, may call bpf_kmesh_l7_set_dest(), and returns a KMESH_L7_*
 * verdict. One implementation is active at a time; a struct_ops link can swap
 * it atomically (BPF_LINK_UPDATE), so a daemon upgrade never leaves a window
 * without a router.
 *
 * Lifetime: a struct_ops map of this type holds a reference on the module, so
 * the module cannot be unloaded while one is registered. Callers run the
 * program under rcu_read_lock(); the kernel frees an unregistered map only
 * after an RCU (and RCU-tasks) grace period. */
#include <linux/bpf.h>
#include <linux/btf.h>
#include <linux/in.h>
#include <linux/in6.h>
#include <linux/module.h>
#include <linux/rcupdate.h>
#include <linux/string.h>
#include <net/ipv6.h>

#include "kmesh.h"

static struct kmesh_l7_ops __rcu *kmesh_l7_active;

int kmesh_l7_route(struct kmesh_l7_call *call, struct kmesh_http_req *req)
{
	struct kmesh_l7_ops *ops;
	int verdict = -ENOENT;

	rcu_read_lock();
	ops = rcu_dereference(kmesh_l7_active);
	if (ops && ops->route) {
		verdict = ops->route(&call->pub, req);
		kmesh_stat_inc(KMESH_STAT_DECISIONS);
	}
	rcu_read_unlock();
	return verdict;
}

int kmesh_l7_set_dest(struct kmesh_l7_call *call, const u8 *addr, u32 addr_len, __be16 port)
{
	if (call->pub.family == AF_INET) {
		struct sockaddr_in *sin = (struct sockaddr_in *)&call->dest;

		if (addr_len != 4)
			return -EAFNOSUPPORT;
		memset(sin, 0, sizeof(*sin));
		sin->sin_family = AF_INET;
		memcpy(&sin->sin_addr, addr, 4);
		sin->sin_port = port;
		call->dest_len = sizeof(*sin);
		return 0;
	}
	if (call->pub.family == AF_INET6) {
		struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&call->dest;

		memset(sin6, 0, sizeof(*sin6));
		sin6->sin6_family = AF_INET6;
		sin6->sin6_port = port;
		if (addr_len == 16) {
			memcpy(&sin6->sin6_addr, addr, 16);
		} else if (addr_len == 4 && !call->ipv6_only) {
			__be32 v4;

			memcpy(&v4, addr, 4);
			ipv6_addr_set_v4mapped(v4, &sin6->sin6_addr);
		} else {
			return -EAFNOSUPPORT;
		}
		call->dest_len = sizeof(*sin6);
		return 0;
	}
	return -EAFNOSUPPORT;
}

/* The errnos a router may give a refused connection: the ones a failed
 * connect reports anyway, plus EBUSY for "the upstream is at its connection
 * limit" (circuit breaking). Anything else would confuse applications. */
int kmesh_l7_set_error(struct kmesh_l7_call *call, int err)
{
	switch (err) {
	case EHOSTUNREACH:
	case ENETUNREACH:
	case ECONNREFUSED:
	case ECONNRESET:
	case ETIMEDOUT:
	case EBUSY:
		call->err = err;
		return 0;
	}
	return -EINVAL;
}

static int kmesh_l7_reg(void *kdata, struct bpf_link *link)
{
	struct kmesh_l7_ops *ops = kdata;

	if (!ops->route)
		return -EINVAL;
	/* Only one router: registering a second one is an error, replacing the
	 * active one goes through .update. */
	if (cmpxchg((struct kmesh_l7_ops **)&kmesh_l7_active, NULL, ops) != NULL)
		return -EEXIST;
	return 0;
}

static void kmesh_l7_unreg(void *kdata, struct bpf_link *link)
{
	cmpxchg((struct kmesh_l7_ops **)&kmesh_l7_active, (struct kmesh_l7_ops *)kdata, NULL);
}

static int kmesh_l7_update(void *kdata, void *old_kdata, struct bpf_link *link)
{
	struct kmesh_l7_ops *ops = kdata;

	if (!ops->route)
		return -EINVAL;
	if (cmpxchg((struct kmesh_l7_ops **)&kmesh_l7_active, (struct kmesh_l7_ops *)old_kdata, ops) != old_kdata)
		return -EBUSY;
	return 0;
}

static int kmesh_l7_validate(void *kdata)
{
	struct kmesh_l7_ops *ops = kdata;

	return ops->route ? 0 : -EINVAL;
}

static int kmesh_l7_init(struct btf *btf)
{
	return 0;
}

/* name is the only data member: copy it, NUL-terminated. */
static int kmesh_l7_init_member(const struct btf_type *t, const struct btf_member *member,
				void *kdata, const void *udata)
{
	const struct kmesh_l7_ops *uops = udata;
	struct kmesh_l7_ops *ops = kdata;

	if (__btf_member_bit_offset(t, member) != offsetof(struct kmesh_l7_ops, name) * 8)
		return 0;
	if (strnlen(uops->name, sizeof(uops->name)) == sizeof(uops->name))
		return -EINVAL;
	memcpy(ops->name, uops->name, sizeof(ops->name));
	return 1;
}

static bool kmesh_l7_is_valid_access(int off, int size, enum bpf_access_type type,
				     const struct bpf_prog *prog, struct bpf_insn_access_aux *info)
{
	return bpf_tracing_btf_ctx_access(off, size, type, prog, info);
}

/* Route programs get the base helpers (maps, time, random, printk...). The
 * context and the request are read-only: no btf_struct_access. */
static const struct bpf_verifier_ops kmesh_l7_verifier_ops = {
	.get_func_proto = bpf_base_func_proto,
	.is_valid_access = kmesh_l7_is_valid_access,
};

/* CFI stubs: the kernel needs one per member to build trampolines. */
static int kmesh_l7_route_stub(struct kmesh_l7_ctx *ctx, struct kmesh_http_req *req)
{
	return KMESH_L7_PASS;
}

static struct kmesh_l7_ops kmesh_l7_cfi_stubs = {
	.route = kmesh_l7_route_stub,
};

static struct bpf_struct_ops kmesh_l7_bpf_ops = {
	.verifier_ops = &kmesh_l7_verifier_ops,
	.init = kmesh_l7_init,
	.init_member = kmesh_l7_init_member,
	.reg = kmesh_l7_reg,
	.unreg = kmesh_l7_unreg,
	.update = kmesh_l7_update,
	.validate = kmesh_l7_validate,
	.cfi_stubs = &kmesh_l7_cfi_stubs,
	.name = "kmesh_l7_ops",
	.owner = THIS_MODULE,
};

int kmesh_l7_ops_init(void)
{
	int err = register_bpf_struct_ops(&kmesh_l7_bpf_ops, kmesh_l7_ops);

	if (err)
		pr_err("kmesh: registering struct_ops kmesh_l7_ops: %d\n", err);
	return err;
}
