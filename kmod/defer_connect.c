// SPDX-License-Identifier: GPL-2.0
/* Deferred connect on a stock kernel (design: ARCHITECTURE.md, "Deferred
 * connect").
 *
 * bpf_kmesh_defer_connect(), called by a cgroup/connect4|6 program (inside
 * __inet_stream_connect, socket owned, before sk_prot->connect), tracks the
 * socket and swaps sk->sk_prot to a module copy of tcp_prot/tcpv6_prot.
 * __inet_stream_connect then calls our connect, which records the destination,
 * sets the TCP Fast Open DEFER_CONNECT bit and the SYN_SENT state without
 * hashing or sending anything, and returns 0: connect() succeeds at once
 * (exactly the path TFO's deferred connect takes), and tcp_poll reports
 * EPOLLOUT for SYN_SENT + DEFER_CONNECT so event loops go on to send.
 *
 * The first send (sendmsg, write, sendfile and splice all end in
 * sk_prot->sendmsg) copies up to KMESH_HTTP_MAX_HEAD bytes without consuming
 * them, parses them, asks kmesh_l7_ops.route for a verdict, restores the
 * original sk_prot, performs the real connect (tcp_v4_connect /
 * tcp_v6_connect) to the chosen destination and continues in tcp_sendmsg,
 * which waits for the handshake (blocking) or returns EAGAIN (non-blocking)
 * and reports connect errors (ECONNREFUSED...) like any failed connect.
 *
 * Every other way out of the deferred state puts the socket back on plain
 * TCP: a receive before any send (server-speaks-first protocols) connects to
 * the recorded destination; close, shutdown, connect(AF_UNSPEC), bind/listen
 * on a marked socket and TCP_ULP restore tcp_prot first.
 *
 * Unloading: every socket using our prot is in kmesh_dsocks. Module exit
 * restores each one under its socket lock (deferred ones connect to their
 * recorded destination: plain TCP from then on), then waits until no task can
 * still execute module code reached through a stale sk_prot pointer:
 *   1. synchronize_rcu_tasks(): every task that loaded our sk_prot before the
 *      restore has either left our code or entered it and raised
 *      kmesh_inflight (done before any voluntary sleep);
 *   2. wait for kmesh_inflight to drop to zero;
 *   3. synchronize_rcu_tasks() again for the instructions after the decrement.
 * The sk_prot entry points that may block for long (tcp_sendmsg, recvmsg,
 * setsockopt) are entered by a sibling call from a small wrapper, so no module
 * frame stays on the stack while they block; `make kmod` checks the compiler
 * really emitted those tail jumps (kmod/check_tailcalls.sh). */
#include <linux/atomic.h>
#include <linux/delay.h>
#include <linux/hashtable.h>
#include <linux/in.h>
#include <linux/in6.h>
#include <linux/module.h>
#include <linux/net.h>
#include <linux/rcupdate.h>
#include <linux/sched/signal.h>
#include <linux/slab.h>
#include <linux/spinlock.h>
#include <linux/uaccess.h>
#include <linux/uio.h>
#include <linux/wait.h>
#include <net/inet_connection_sock.h>
#include <net/inet_sock.h>
#include <net/ipv6.h>
#include <net/sock.h>
#include <net/tcp.h>
#include <net/transp_v6.h>

#include "kmesh.h"

unsigned int kmesh_max_deferred = 65536;
module_param_named(max_deferred, kmesh_max_deferred, uint, 0444);
MODULE_PARM_DESC(max_deferred, "most sockets marked or deferred at once; more are refused (-ENOSPC)");

struct kmesh_dsock {
	struct hlist_node node;
	struct sock *sk;
	struct proto *orig;
	u64 tag;
	bool armed;    /* the connect program asked to defer the current connect() */
	bool deferred; /* connect() returned without a SYN; waiting for the first send */
	int dest_len;
	struct sockaddr_storage dest;
};

static DEFINE_HASHTABLE(kmesh_dsocks, 10);
static DEFINE_SPINLOCK(kmesh_dsocks_lock);
static unsigned int kmesh_dsocks_count;

static struct proto kmesh_prot[2] __ro_after_init; /* copies of tcp_prot, tcpv6_prot */

static atomic_t kmesh_inflight = ATOMIC_INIT(0);
static DECLARE_WAIT_QUEUE_HEAD(kmesh_inflight_wq);

static void kmesh_enter(void)
{
	atomic_inc(&kmesh_inflight);
}

static void kmesh_leave(void)
{
	if (atomic_dec_and_test(&kmesh_inflight))
		wake_up(&kmesh_inflight_wq);
}

u32 kmesh_defer_live(void)
{
	return READ_ONCE(kmesh_dsocks_count);
}

static struct proto *base_prot(const struct sock *sk)
{
	return sk->sk_family == AF_INET6 ? &tcpv6_prot : &tcp_prot;
}

static bool is_kmesh_prot(const struct proto *p)
{
	return p == &kmesh_prot[0] || p == &kmesh_prot[1];
}

/* Entries are added by the kfunc and removed by dsock_detach, both with the
 * socket owned, so a caller that owns the socket may use the entry after
 * dropping the table lock. */
static struct kmesh_dsock *dsock_get(struct sock *sk)
{
	struct kmesh_dsock *d, *found = NULL;

	spin_lock_bh(&kmesh_dsocks_lock);
	hash_for_each_possible(kmesh_dsocks, d, node, (unsigned long)sk) {
		if (d->sk == sk) {
			found = d;
			break;
		}
	}
	spin_unlock_bh(&kmesh_dsocks_lock);
	return found;
}

/* Puts the socket back on its original proto and forgets it. Socket owned. */
static const struct proto *dsock_detach(struct sock *sk, struct kmesh_dsock *d)
{
	struct proto *orig = d->orig;

	spin_lock_bh(&kmesh_dsocks_lock);
	hash_del(&d->node);
	kmesh_dsocks_count--;
	spin_unlock_bh(&kmesh_dsocks_lock);
	WRITE_ONCE(sk->sk_prot, orig);
	kfree(d);
	return orig;
}

/* The original proto of a socket we find on our prot but not in the table
 * (cannot happen by construction; recover rather than crash). */
static const struct proto *untracked_restore(struct sock *sk)
{
	struct proto *orig = base_prot(sk);

	if (is_kmesh_prot(READ_ONCE(sk->sk_prot)))
		WRITE_ONCE(sk->sk_prot, orig);
	return orig;
}

/* Ends a deferred socket like a failed connect (tcp_done_with_error, which
 * is not exported): error, CLOSE, both directions shut, waiters woken. The
 * state goes to CLOSE first because no SYN went out, so this is not counted
 * as a failed connection attempt. */
static void fail_socket(struct sock *sk, int err)
{
	tcp_set_state(sk, TCP_CLOSE);
	WRITE_ONCE(sk->sk_err, err);
	smp_wmb(); /* pairs with smp_rmb() in tcp_poll() */
	tcp_done(sk);
	sk_error_report(sk);
}

/* Leaves the deferred state: real connect to addr with the original proto
 * (sk_prot already restored). Errors surface on the next send or poll, as for
 * a failed non-blocking connect. Socket owned. */
static void real_connect(struct sock *sk, const struct proto *orig, struct sockaddr *addr, int len)
{
	int err;

	inet_clear_bit(DEFER_CONNECT, sk);
	/* The state stays SYN_SENT (no EPOLLHUP window); tcp_v*_connect sets
	 * SYN_SENT again once hashed, or CLOSE when it fails after hashing. */
	err = orig->connect(sk, addr, len);
	if (err < 0)
		fail_socket(sk, -err);
}

/* Deferred socket, no routing decision (receive first, unload):
 * plain TCP to the destination connect() was given. Socket owned. */
static void fallback_connect(struct sock *sk, struct kmesh_dsock *d)
{
	struct sockaddr_storage dest = d->dest;
	int len = d->dest_len;
	const struct proto *orig = dsock_detach(sk, d);

	kmesh_stat_inc(KMESH_STAT_FALLBACKS);
	real_connect(sk, orig, (struct sockaddr *)&dest, len);
}

/* ---- kfunc: mark a socket from cgroup/connect4|6 ------------------------------ */

int kmesh_defer_mark(struct sock *sk, u64 tag)
{
	struct proto *prot;
	struct kmesh_dsock *d;
	int idx;

	if (kmesh_safe_mode()) {
		kmesh_stat_inc(KMESH_STAT_REFUSED);
		return -EPERM;
	}
	if (sk->sk_type != SOCK_STREAM || sk->sk_protocol != IPPROTO_TCP || sk->sk_kern_sock) {
		kmesh_stat_inc(KMESH_STAT_REFUSED);
		return -EOPNOTSUPP;
	}
	/* Only from inside connect(): the socket is owned, unconnected, not in
	 * a Fast Open sendmsg, not repaired, without ULP. */
	if (!sock_owned_by_user_nocheck(sk) || !sk->sk_socket || sk->sk_socket->state != SS_UNCONNECTED ||
	    sk->sk_state != TCP_CLOSE || tcp_sk(sk)->fastopen_req || tcp_sk(sk)->repair ||
	    inet_csk(sk)->icsk_ulp_ops) {
		kmesh_stat_inc(KMESH_STAT_REFUSED);
		return -EBUSY;
	}
	prot = READ_ONCE(sk->sk_prot);
	if (is_kmesh_prot(prot)) {
		d = dsock_get(sk);
		if (!d)
			return -EBUSY;
		d->armed = true;
		d->tag = tag;
		return 0;
	}
	if (prot == &tcp_prot && sk->sk_family == AF_INET) {
		idx = 0;
	} else if (prot == &tcpv6_prot && sk->sk_family == AF_INET6) {
		idx = 1;
	} else {
		/* Another layer already owns sk_prot (sockmap, a ULP...). */
		kmesh_stat_inc(KMESH_STAT_REFUSED);
		return -EOPNOTSUPP;
	}
	d = kzalloc(sizeof(*d), GFP_ATOMIC | __GFP_NOWARN);
	if (!d)
		return -ENOMEM;
	d->sk = sk;
	d->orig = prot;
	d->tag = tag;
	d->armed = true;
	spin_lock_bh(&kmesh_dsocks_lock);
	if (kmesh_dsocks_count >= READ_ONCE(kmesh_max_deferred)) {
		spin_unlock_bh(&kmesh_dsocks_lock);
		kfree(d);
		kmesh_stat_inc(KMESH_STAT_REFUSED);
		return -ENOSPC;
	}
	hash_add(kmesh_dsocks, &d->node, (unsigned long)sk);
	kmesh_dsocks_count++;
	spin_unlock_bh(&kmesh_dsocks_lock);
	WRITE_ONCE(sk->sk_prot, &kmesh_prot[idx]);
	return 0;
}

/* ---- proto operations (socket owned by the caller) ---------------------------- */

static bool dest_ok(const struct sock *sk, const struct sockaddr *uaddr, int len)
{
	if (sk->sk_family == AF_INET)
		return len >= (int)sizeof(struct sockaddr_in) && uaddr->sa_family == AF_INET;
	return len >= SIN6_LEN_RFC2133 && uaddr->sa_family == AF_INET6;
}

static int kmesh_connect(struct sock *sk, struct sockaddr *uaddr, int addr_len)
{
	const struct proto *orig;
	struct kmesh_dsock *d;
	int err;

	kmesh_enter();
	d = dsock_get(sk);
	if (!d || !d->armed || !dest_ok(sk, uaddr, addr_len)) {
		/* Not asked to defer this connect (or an address the real
		 * connect must reject): plain TCP. */
		orig = d ? dsock_detach(sk, d) : untracked_restore(sk);
		err = orig->connect(sk, uaddr, addr_len);
		goto out;
	}
	d->armed = false;
	d->dest_len = min_t(int, addr_len, sizeof(d->dest));
	memcpy(&d->dest, uaddr, d->dest_len);
	d->deferred = true;
	inet_set_bit(DEFER_CONNECT, sk);
	tcp_set_state(sk, TCP_SYN_SENT); /* unhashed: only the state changes */
	kmesh_stat_inc(KMESH_STAT_DEFERRED);
	err = 0;
out:
	kmesh_leave();
	return err;
}

/* Reached only on a second connect() of a marked socket whose first connect
 * was denied after the kfunc ran: the program decides again. */
static int kmesh_pre_connect(struct sock *sk, struct sockaddr *uaddr, int addr_len)
{
	const struct proto *orig = base_prot(sk);
	struct kmesh_dsock *d;
	int err;

	kmesh_enter();
	d = dsock_get(sk);
	if (d)
		d->armed = false;
	err = orig->pre_connect(sk, uaddr, addr_len);
	if (err && d)
		dsock_detach(sk, d);
	kmesh_leave();
	return err;
}

static noinline const struct proto *kmesh_before_disconnect(struct sock *sk)
{
	const struct proto *orig;
	struct kmesh_dsock *d;

	kmesh_enter();
	d = dsock_get(sk);
	if (d) {
		/* tcp_disconnect treats the fake SYN_SENT like a connect in
		 * progress: CLOSE and ECONNRESET, nothing to unhash. */
		inet_clear_bit(DEFER_CONNECT, sk);
		orig = dsock_detach(sk, d);
	} else {
		orig = untracked_restore(sk);
	}
	kmesh_leave();
	return orig;
}

static int kmesh_disconnect(struct sock *sk, int flags)
{
	return kmesh_before_disconnect(sk)->disconnect(sk, flags);
}

/* Called by inet_csk_destroy_sock() when the socket dies (close). */
static noinline const struct proto *kmesh_before_destroy(struct sock *sk)
{
	const struct proto *orig;
	struct kmesh_dsock *d;

	kmesh_enter();
	d = dsock_get(sk);
	orig = d ? dsock_detach(sk, d) : untracked_restore(sk);
	kmesh_leave();
	return orig;
}

static void kmesh_destroy(struct sock *sk)
{
	kmesh_before_destroy(sk)->destroy(sk);
}

/* bind() or listen() on a marked socket: plain TCP from now on. */
static noinline const struct proto *kmesh_before_get_port(struct sock *sk)
{
	const struct proto *orig = base_prot(sk);
	struct kmesh_dsock *d;

	kmesh_enter();
	d = dsock_get(sk);
	if (!d)
		orig = untracked_restore(sk);
	else if (!d->deferred)
		orig = dsock_detach(sk, d);
	kmesh_leave();
	return orig;
}

static int kmesh_get_port(struct sock *sk, unsigned short snum)
{
	return kmesh_before_get_port(sk)->get_port(sk, snum);
}

/* ---- proto operations that lock the socket themselves ------------------------- */

/* A ULP (kTLS, espintcp) builds its own proto from sk->sk_prot: it must never
 * see ours. Returns NULL for "fail with ENOTCONN" (a deferred socket is not
 * connected yet, as TLS requires). */
static noinline const struct proto *kmesh_before_setsockopt(struct sock *sk, int level, int optname)
{
	const struct proto *orig = base_prot(sk);
	struct kmesh_dsock *d;

	if (level != SOL_TCP || optname != TCP_ULP)
		return orig;
	kmesh_enter();
	lock_sock(sk);
	d = dsock_get(sk);
	if (!d)
		orig = untracked_restore(sk);
	else if (d->deferred)
		orig = NULL;
	else
		orig = dsock_detach(sk, d);
	release_sock(sk);
	kmesh_leave();
	return orig;
}

static int kmesh_setsockopt(struct sock *sk, int level, int optname, sockptr_t optval, unsigned int optlen)
{
	const struct proto *orig = kmesh_before_setsockopt(sk, level, optname);

	if (!orig)
		return -ENOTCONN;
	return orig->setsockopt(sk, level, optname, optval, optlen);
}

static unsigned int kmesh_recv_grace_ms = 100;
module_param_named(recv_grace_ms, kmesh_recv_grace_ms, uint, 0444);
MODULE_PARM_DESC(recv_grace_ms, "how long a receive on a deferred socket waits for the first send before it connects to the original destination (server-first); at most 1000");

/* Whether the socket is still deferred. Also called by sk_wait_event()
 * without the socket lock, when another thread may detach and free the
 * entry: so it reads the entry under the table lock (detach removes it
 * under that lock before freeing it). */
static bool still_deferred(struct sock *sk)
{
	struct kmesh_dsock *d;
	bool deferred = false;

	spin_lock_bh(&kmesh_dsocks_lock);
	hash_for_each_possible(kmesh_dsocks, d, node, (unsigned long)sk) {
		if (d->sk == sk) {
			deferred = READ_ONCE(d->deferred);
			break;
		}
	}
	spin_unlock_bh(&kmesh_dsocks_lock);
	return deferred;
}

/* A receive before any send. Many clients read and write from different
 * threads (Go's net/http starts its reader as soon as the connection is up,
 * often before the writer sends the request), so the receive first waits a
 * short, bounded grace period (recv_grace_ms, the socket lock released) for
 * the first send to make the routing decision. If none comes, the client
 * waits for the server to speak (a server-first protocol): there is nothing
 * to route on, so connect to the recorded destination. The wait is bounded
 * and ends early on a signal, so unloading still completes. */
static noinline const struct proto *kmesh_before_recv(struct sock *sk, int flags)
{
	const struct proto *orig = base_prot(sk);
	DEFINE_WAIT_FUNC(wait, woken_wake_function);
	unsigned long deadline;
	struct kmesh_dsock *d;

	if (flags & MSG_ERRQUEUE)
		return orig;
	kmesh_enter();
	lock_sock(sk);
	deadline = jiffies + msecs_to_jiffies(min(kmesh_recv_grace_ms, 1000U));
	while (still_deferred(sk) && time_before(jiffies, deadline) && !signal_pending(current)) {
		/* Wakes on the socket's own events; re-checks every 2 ms anyway
		 * (the send path does not wake readers when it connects). */
		long timeo = min_t(long, msecs_to_jiffies(2), (long)(deadline - jiffies));

		if (timeo <= 0)
			break;
		add_wait_queue(sk_sleep(sk), &wait);
		sk_wait_event(sk, &timeo, !still_deferred(sk), &wait);
		remove_wait_queue(sk_sleep(sk), &wait);
	}
	d = dsock_get(sk);
	if (!d) {
		/* The first send decided meanwhile (and restored sk_prot), or
		 * nothing tracks this socket. */
		if (is_kmesh_prot(READ_ONCE(sk->sk_prot)))
			untracked_restore(sk);
	} else if (d->deferred) {
		fallback_connect(sk, d);
	} else {
		dsock_detach(sk, d);
	}
	orig = READ_ONCE(sk->sk_prot);
	if (is_kmesh_prot(orig))
		orig = untracked_restore(sk);
	release_sock(sk);
	kmesh_leave();
	return orig;
}

static int kmesh_recvmsg(struct sock *sk, struct msghdr *msg, size_t len, int flags, int *addr_len)
{
	return kmesh_before_recv(sk, flags)->recvmsg(sk, msg, len, flags, addr_len);
}

/* The routing decision of a first send. Socket owned; d is consumed. */
static void decide(struct sock *sk, struct kmesh_dsock *d, struct msghdr *msg)
{
	size_t avail = msg_data_left(msg);
	u32 n = min_t(size_t, avail, KMESH_HTTP_MAX_HEAD);
	struct kmesh_http_req *req;
	struct kmesh_l7_call call;
	const struct proto *orig;
	struct sockaddr *addr;
	int verdict = -ENOENT, len;

	memset(&call, 0, sizeof(call));
	call.pub.tag = d->tag;
	call.pub.family = sk->sk_family;
	call.pub.len = n;
	call.ipv6_only = sk->sk_family == AF_INET6 && sk->sk_ipv6only;
	if (sk->sk_family == AF_INET) {
		const struct sockaddr_in *sin = (const struct sockaddr_in *)&d->dest;

		call.pub.orig_ip4 = sin->sin_addr.s_addr;
		call.pub.orig_port = sin->sin_port;
	} else {
		const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)&d->dest;

		memcpy(call.pub.orig_ip6, &sin6->sin6_addr, 16);
		call.pub.orig_port = sin6->sin6_port;
	}

	req = kmesh_http_req_alloc(n, GFP_KERNEL);
	if (req) {
		/* Peek through a copy of the iterator: the bytes stay in msg for
		 * tcp_sendmsg. Works for user buffers, kvecs and the bvecs of
		 * sendfile/splice (MSG_SPLICE_PAGES). */
		struct iov_iter it = msg->msg_iter;
		size_t copied;

		/* Never sleep on a page fault here (userfaultfd could make that
		 * unbounded and hold up rmmod): the app just wrote these bytes,
		 * so they are resident; if not, fall back to plain TCP. */
		pagefault_disable();
		copied = copy_from_iter(req->data, n, &it);
		pagefault_enable();
		if (copied == n) {
			kmesh_http_req_parse(req, avail > n);
			verdict = kmesh_l7_route(&call, req);
		}
		kmesh_http_req_free(req);
	}

	addr = (struct sockaddr *)&d->dest;
	len = d->dest_len;
	switch (verdict) {
	case KMESH_L7_REDIRECT:
		if (call.dest_len) {
			addr = (struct sockaddr *)&call.dest;
			len = call.dest_len;
			kmesh_stat_inc(KMESH_STAT_REDIRECTS);
		} else {
			kmesh_stat_inc(KMESH_STAT_FALLBACKS); /* redirect without a destination */
		}
		break;
	case KMESH_L7_PASS:
		break;
	case KMESH_L7_NO_ROUTE:
		kmesh_stat_inc(KMESH_STAT_NO_ROUTE);
		dsock_detach(sk, d);
		inet_clear_bit(DEFER_CONNECT, sk);
		fail_socket(sk, call.err ? call.err : EHOSTUNREACH);
		return;
	default:
		/* No router registered, out of memory, or an unknown verdict. */
		kmesh_stat_inc(KMESH_STAT_FALLBACKS);
		break;
	}
	/* addr may point into d: copy it before d is freed. */
	if (addr == (struct sockaddr *)&d->dest) {
		call.dest = d->dest;
		addr = (struct sockaddr *)&call.dest;
	}
	orig = dsock_detach(sk, d);
	real_connect(sk, orig, addr, len);
}

/* Returns true when the send must return 0 without sending: a zero-length
 * write keeps the socket deferred (tcp_sendmsg must never see the fake
 * SYN_SENT state: it would start Fast Open on an unhashed socket). */
static noinline bool kmesh_before_send(struct sock *sk, struct msghdr *msg)
{
	struct kmesh_dsock *d;
	bool skip = false;

	kmesh_enter();
	lock_sock(sk);
	d = dsock_get(sk);
	if (!d) {
		untracked_restore(sk);
	} else if (!d->deferred) {
		dsock_detach(sk, d); /* marked, never connected: tcp_sendmsg says EPIPE */
	} else if (!msg_data_left(msg)) {
		skip = true;
	} else {
		decide(sk, d, msg);
		/* The connect is done: MSG_FASTOPEN would start another one. */
		msg->msg_flags &= ~MSG_FASTOPEN;
	}
	release_sock(sk);
	kmesh_leave();
	return skip;
}

static int kmesh_sendmsg(struct sock *sk, struct msghdr *msg, size_t size)
{
	if (unlikely(kmesh_before_send(sk, msg)))
		return 0;
	return tcp_sendmsg(sk, msg, size);
}

/* ---- init and exit ---------------------------------------------------------------- */

static void build_prot(struct proto *p, const struct proto *base)
{
	*p = *base;
	p->pre_connect = kmesh_pre_connect;
	p->connect = kmesh_connect;
	p->disconnect = kmesh_disconnect;
	p->destroy = kmesh_destroy;
	p->setsockopt = kmesh_setsockopt;
	p->sendmsg = kmesh_sendmsg;
	p->recvmsg = kmesh_recvmsg;
	p->get_port = kmesh_get_port;
	/* inet_send_prepare must not autobind a port before the real connect. */
	p->no_autobind = true;
}

int kmesh_defer_init(void)
{
	build_prot(&kmesh_prot[0], &tcp_prot);
	build_prot(&kmesh_prot[1], &tcpv6_prot);
	return 0;
}

/* Takes a reference on some tracked socket, or returns NULL when none is left. */
static struct sock *pick_tracked(void)
{
	struct kmesh_dsock *d;
	struct sock *sk = NULL;
	int bkt;

	spin_lock_bh(&kmesh_dsocks_lock);
	hash_for_each(kmesh_dsocks, bkt, d, node) {
		if (refcount_inc_not_zero(&d->sk->sk_refcnt)) {
			sk = d->sk;
			break;
		}
	}
	spin_unlock_bh(&kmesh_dsocks_lock);
	return sk;
}

void kmesh_defer_exit(void)
{
	unsigned int restored = 0, connected = 0, waits = 0;
	struct kmesh_dsock *d;
	struct sock *sk;

	/* No BPF program can call the kfunc any more (programs using our kfuncs
	 * hold a module reference), so the table only shrinks from here. */
	for (;;) {
		sk = pick_tracked();
		if (!sk) {
			if (!READ_ONCE(kmesh_dsocks_count))
				break;
			/* An entry whose socket is being freed: its destroy
			 * removes it. Bounded wait. */
			if (++waits > 1000) {
				pr_err("kmesh: %u tracked sockets did not go away\n", kmesh_dsocks_count);
				break;
			}
			msleep(10);
			continue;
		}
		lock_sock(sk);
		d = dsock_get(sk);
		if (d) {
			if (d->deferred) {
				fallback_connect(sk, d);
				connected++;
			} else {
				dsock_detach(sk, d);
			}
			restored++;
		}
		release_sock(sk);
		sock_put(sk);
	}
	if (restored)
		pr_info("kmesh: unload: %u sockets back on plain TCP (%u connected to their original destination)\n",
			restored, connected);

	synchronize_rcu_tasks();
	while (atomic_read(&kmesh_inflight))
		wait_event_timeout(kmesh_inflight_wq, !atomic_read(&kmesh_inflight), HZ / 10);
	synchronize_rcu_tasks();
	/* A leak check the VM tests see: their harness fails on any WARNING. */
	WARN(READ_ONCE(kmesh_dsocks_count), "kmesh: %u tracked sockets left at unload\n", kmesh_dsocks_count);
}
