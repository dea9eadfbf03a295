// SPDX-License-Identifier: GPL-2.0
/* kmesh.ko: in-kernel L7 helpers for the kmesh-go dataplane (kernel-native
 * mode): HTTP/1.x parser kfuncs, deferred connect with a struct_ops routing
 * decision, and the generic netlink family "kmesh" the daemon talks to.
 *
 * Layout (like net/tls): main.c init/exit and genetlink, http_parse.c the pure
 * parser, kfuncs.c the BPF interface, defer_connect.c the socket side,
 * l7_ops.c the struct_ops type, stats.c counters and safe mode. */
#include <linux/init.h>
#include <linux/module.h>
#include <net/genetlink.h>

#include "kmesh.h"

static const struct nla_policy kmesh_genl_policy[__KMESH_ATTR_MAX] = {
	[KMESH_ATTR_ABI_VERSION] = { .type = NLA_U32 },
	[KMESH_ATTR_SAFE_MODE] = NLA_POLICY_MAX(NLA_U8, 1),
};

static const u16 kmesh_stat_attr[__KMESH_STAT_MAX] = {
	[KMESH_STAT_PARSED] = KMESH_ATTR_STAT_PARSED,
	[KMESH_STAT_PARSE_ERRORS] = KMESH_ATTR_STAT_PARSE_ERRORS,
	[KMESH_STAT_DEFERRED] = KMESH_ATTR_STAT_DEFERRED,
	[KMESH_STAT_DECISIONS] = KMESH_ATTR_STAT_DECISIONS,
	[KMESH_STAT_REDIRECTS] = KMESH_ATTR_STAT_REDIRECTS,
	[KMESH_STAT_NO_ROUTE] = KMESH_ATTR_STAT_NO_ROUTE,
	[KMESH_STAT_FALLBACKS] = KMESH_ATTR_STAT_FALLBACKS,
	[KMESH_STAT_REFUSED] = KMESH_ATTR_STAT_REFUSED,
};

static struct genl_family kmesh_genl_family;

static int kmesh_reply(struct genl_info *info, u8 cmd, int (*fill)(struct sk_buff *skb))
{
	struct sk_buff *skb;
	void *hdr;
	int err;

	skb = genlmsg_new(NLMSG_GOODSIZE, GFP_KERNEL);
	if (!skb)
		return -ENOMEM;
	hdr = genlmsg_put_reply(skb, info, &kmesh_genl_family, 0, cmd);
	if (!hdr) {
		nlmsg_free(skb);
		return -EMSGSIZE;
	}
	err = fill(skb);
	if (err) {
		nlmsg_free(skb);
		return err;
	}
	genlmsg_end(skb, hdr);
	return genlmsg_reply(skb, info);
}

static int fill_hello(struct sk_buff *skb)
{
	u64 features = KMESH_FEAT_HTTP_PARSER | KMESH_FEAT_DEFER_CONNECT | KMESH_FEAT_L7_OPS |
		       KMESH_FEAT_SAFE_MODE;

	if (nla_put_u32(skb, KMESH_ATTR_ABI_VERSION, KMESH_ABI_VERSION) ||
	    nla_put_u64_64bit(skb, KMESH_ATTR_FEATURES, features, KMESH_ATTR_PAD) ||
	    nla_put_string(skb, KMESH_ATTR_MODULE_VERSION, KMESH_MODULE_VERSION) ||
	    nla_put_u8(skb, KMESH_ATTR_SAFE_MODE, kmesh_safe_mode()) ||
	    nla_put_u32(skb, KMESH_ATTR_MAX_HEAD, KMESH_HTTP_MAX_HEAD) ||
	    nla_put_u32(skb, KMESH_ATTR_MAX_HEADERS, KMESH_HTTP_MAX_HEADERS) ||
	    nla_put_u32(skb, KMESH_ATTR_MAX_DEFERRED, READ_ONCE(kmesh_max_deferred)))
		return -EMSGSIZE;
	return 0;
}

static int fill_stats(struct sk_buff *skb)
{
	int i;

	for (i = 0; i < __KMESH_STAT_MAX; i++) {
		if (nla_put_u64_64bit(skb, kmesh_stat_attr[i], kmesh_stat_read(i), KMESH_ATTR_PAD))
			return -EMSGSIZE;
	}
	if (nla_put_u64_64bit(skb, KMESH_ATTR_STAT_LIVE, kmesh_defer_live(), KMESH_ATTR_PAD) ||
	    nla_put_u8(skb, KMESH_ATTR_SAFE_MODE, kmesh_safe_mode()))
		return -EMSGSIZE;
	return 0;
}

static int fill_safe_mode(struct sk_buff *skb)
{
	return nla_put_u8(skb, KMESH_ATTR_SAFE_MODE, kmesh_safe_mode()) ? -EMSGSIZE : 0;
}

/* HELLO: the daemon's handshake. A client may send the ABI version it was
 * built for; a mismatch is refused with a message naming both versions. */
static int kmesh_cmd_hello(struct sk_buff *skb, struct genl_info *info)
{
	if (info->attrs[KMESH_ATTR_ABI_VERSION]) {
		u32 want = nla_get_u32(info->attrs[KMESH_ATTR_ABI_VERSION]);

		if (want != KMESH_ABI_VERSION) {
			NL_SET_ERR_MSG_FMT(info->extack, "kmesh.ko has ABI version %u, client needs %u",
					   KMESH_ABI_VERSION, want);
			return -EPROTO;
		}
	}
	return kmesh_reply(info, KMESH_CMD_HELLO, fill_hello);
}

static int kmesh_cmd_get_stats(struct sk_buff *skb, struct genl_info *info)
{
	return kmesh_reply(info, KMESH_CMD_GET_STATS, fill_stats);
}

static int kmesh_cmd_set_safe_mode(struct sk_buff *skb, struct genl_info *info)
{
	bool on;

	if (GENL_REQ_ATTR_CHECK(info, KMESH_ATTR_SAFE_MODE))
		return -EINVAL;
	on = nla_get_u8(info->attrs[KMESH_ATTR_SAFE_MODE]);
	if (on != kmesh_safe_mode())
		pr_info("kmesh: safe mode %s: new sockets are %s\n", on ? "on" : "off",
			on ? "no longer deferred" : "deferred again");
	kmesh_set_safe_mode(on);
	return kmesh_reply(info, KMESH_CMD_SET_SAFE_MODE, fill_safe_mode);
}

static const struct genl_small_ops kmesh_genl_ops[] = {
	{ .cmd = KMESH_CMD_HELLO, .doit = kmesh_cmd_hello },
	{ .cmd = KMESH_CMD_GET_STATS, .doit = kmesh_cmd_get_stats },
	{ .cmd = KMESH_CMD_SET_SAFE_MODE, .doit = kmesh_cmd_set_safe_mode, .flags = GENL_ADMIN_PERM },
};

static struct genl_family kmesh_genl_family __ro_after_init = {
	.name = KMESH_GENL_NAME,
	.version = KMESH_GENL_VERSION,
	.maxattr = __KMESH_ATTR_MAX - 1,
	.policy = kmesh_genl_policy,
	.netnsok = true,
	.module = THIS_MODULE,
	.small_ops = kmesh_genl_ops,
	.n_small_ops = ARRAY_SIZE(kmesh_genl_ops),
	.resv_start_op = __KMESH_CMD_MAX, /* strict validation for every command */
};

static int __init kmesh_init(void)
{
	int err;

	err = kmesh_defer_init();
	if (err)
		return err;
	/* kfuncs and the struct_ops type belong to the module's BTF: if a later
	 * step fails they go away with it, and no BPF program can use them
	 * before init has returned (the module is not live yet). */
	err = kmesh_kfuncs_init();
	if (err)
		return err;
	err = kmesh_l7_ops_init();
	if (err)
		return err;
	err = genl_register_family(&kmesh_genl_family);
	if (err) {
		pr_err("kmesh: registering genetlink family: %d\n", err);
		return err;
	}
	pr_info("kmesh: loaded, version %s, abi %d\n", KMESH_MODULE_VERSION, KMESH_ABI_VERSION);
	return 0;
}

static void __exit kmesh_exit(void)
{
	genl_unregister_family(&kmesh_genl_family);
	kmesh_defer_exit();
	kmesh_kfuncs_exit();
	pr_info("kmesh: unloaded\n");
}

module_init(kmesh_init);
module_exit(kmesh_exit);

MODULE_LICENSE("GPL");
MODULE_VERSION(KMESH_MODULE_VERSION);
MODULE_DESCRIPTION("kmesh-go: in-kernel L7 helpers for a sidecarless service mesh");
MODULE_AUTHOR("kmesh-go authors");
