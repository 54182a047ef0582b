/*
 * policy.c - which URLs may carry the password and the token at all
 * (docs/trust.md 5): https everywhere, plain http only to this machine.
 * Checked before any connection is made, so a configuration that would
 * send credentials in the clear never gets to send them.
 *
 * A name is resolved and every address it gives must be loopback: a name
 * that happens to point at 127.0.0.1 today is as safe as the address, and
 * one that resolves to anything else is not. No locking: no state.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>

#include "fetch/internal.h"

static int policy_addr_loopback(const struct sockaddr *sa)
{
	const struct sockaddr_in6 *s6;

	if (sa->sa_family == AF_INET)
		return (ntohl(((const struct sockaddr_in *)sa)->sin_addr.s_addr) >> 24) == 127;
	if (sa->sa_family != AF_INET6)
		return 0;
	s6 = (const struct sockaddr_in6 *)sa;
	if (IN6_IS_ADDR_LOOPBACK(&s6->sin6_addr))
		return 1;
	/* ::ffff:127.x.y.z */
	return IN6_IS_ADDR_V4MAPPED(&s6->sin6_addr) && s6->sin6_addr.s6_addr[12] == 127;
}

/* 1 loopback, 0 not (*ret_why set), -errno. */
static int policy_host_loopback(const char *host, char **ret_why)
{
	struct addrinfo hints = {0}, *res = NULL, *ai;
	char addr[INET6_ADDRSTRLEN] = "";
	int rc, r = 1;

	if (strcasecmp(host, "localhost") == 0)
		return 1;
	hints.ai_socktype = SOCK_STREAM;
	rc = getaddrinfo(host, NULL, &hints, &res);
	if (rc != 0) {
		if (asprintf(ret_why, "cannot resolve '%s' to check that it is loopback: %s", host,
			     rc == EAI_SYSTEM ? strerror(errno) : gai_strerror(rc)) < 0)
			*ret_why = NULL;
		return 0;
	}
	for (ai = res; ai; ai = ai->ai_next) {
		if (policy_addr_loopback(ai->ai_addr))
			continue;
		if (ai->ai_family == AF_INET)
			inet_ntop(AF_INET, &((struct sockaddr_in *)ai->ai_addr)->sin_addr, addr,
				  sizeof(addr));
		else if (ai->ai_family == AF_INET6)
			inet_ntop(AF_INET6, &((struct sockaddr_in6 *)ai->ai_addr)->sin6_addr, addr,
				  sizeof(addr));
		r = 0;
		break;
	}
	freeaddrinfo(res);
	/* A name shows the address it resolved to; an address is its own. */
	if (r == 0 && strcmp(host, addr) == 0)
		*addr = '\0';
	if (r == 0 && asprintf(ret_why, "'%s'%s%s%s is not a loopback address", host,
			       *addr ? " (" : "", addr, *addr ? ")" : "") < 0)
		*ret_why = NULL;
	return r;
}

int fetch_url_allowed(const char *url, char **ret_why)
{
	CURLU *u;
	char *scheme = NULL, *host = NULL, *why = NULL, *msg = NULL;
	size_t n;
	int r;

	u = curl_url();
	if (!u)
		return -ENOMEM;
	if (curl_url_set(u, CURLUPART_URL, url, 0) != CURLUE_OK ||
	    curl_url_get(u, CURLUPART_SCHEME, &scheme, 0) != CURLUE_OK ||
	    curl_url_get(u, CURLUPART_HOST, &host, 0) != CURLUE_OK) {
		r = -EINVAL;
		if (asprintf(&msg, "'%s' is not a URL", url) < 0)
			msg = NULL;
		goto out;
	}
	if (strcasecmp(scheme, "https") == 0) {
		r = 0;
		goto out;
	}
	if (strcasecmp(scheme, "http") != 0) {
		r = -EINVAL;
		if (asprintf(&msg, "'%s' is neither https:// nor http://", url) < 0)
			msg = NULL;
		goto out;
	}
	/* curl keeps an IPv6 literal's brackets: "[::1]". */
	n = strlen(host);
	if (n >= 2 && host[0] == '[' && host[n - 1] == ']') {
		memmove(host, host + 1, n - 2);
		host[n - 2] = '\0';
	}
	r = policy_host_loopback(host, &why);
	if (r < 0)
		goto out;
	if (r == 1) {
		r = 0;
		goto out;
	}
	r = -EPERM;
	if (asprintf(&msg,
		     "plain http:// would send the password and the token in the clear: %s; "
		     "use https://",
		     why ? why : "not a loopback address") < 0)
		msg = NULL;
out:
	if (r < 0 && ret_why) {
		*ret_why = msg;
		msg = NULL;
	}
	free(msg);
	free(why);
	curl_free(scheme);
	curl_free(host);
	curl_url_cleanup(u);
	return r;
}
