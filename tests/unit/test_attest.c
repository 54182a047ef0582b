/*
 * test_attest.c - attested enrolment (docs/trust.md 1) seen from an attacker's
 * side: tpm/ against the stack's swtpm, fetch/ against the API emulator.
 * One honest enrolment gets a device id; its proof replayed, a certify over
 * another nonce, a challenge spent by a failed attempt, a guessed
 * credential secret, a software public key, an altered dk_public, PCR
 * values other than the quoted ones, an AK that is not restricted, an
 * expired challenge, and a TPM whose EK certificate comes from a CA the API
 * does not trust each get 403 and no device id; an EK certificate copied
 * from a genuine TPM does not activate on another one; a TPM whose only EK
 * certificate is the high-range ECC P-384 one enrols as well.
 * Needs the local stack (tests/run) and scripts/stack for the second swtpm.
 */
#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jansson.h>
#include <openssl/evp.h>
#include <openssl/pem.h>

#include "crypto/crypto.h"
#include "fetch/fetch.h"
#include "tests/unit/check.h"
#include "tpm/tpm.h"

static char logs[1 << 16];
static size_t logs_len;

static void tpm_log(int prio, const char *msg)
{
	size_t n = strlen(msg);

	fprintf(stderr, "# log [%d]: %s\n", prio, msg);
	if (logs_len + n + 1 < sizeof(logs)) {
		memcpy(logs + logs_len, msg, n);
		logs_len += n;
		logs[logs_len++] = '\n';
		logs[logs_len] = '\0';
	}
}

static void fetch_log(int prio, const char *msg)
{
	tpm_log(prio, msg);
}

static const char *env(const char *name)
{
	const char *v = getenv(name);

	return v && *v ? v : NULL;
}

static int set_b64(json_t *obj, const char *key, const uint8_t *data, size_t len)
{
	char *b = malloc(4 * ((len + 2) / 3) + 1);
	int r;

	if (!b)
		return -1;
	crypto_b64_encode(data, len, b);
	r = json_object_set_new(obj, key, json_string(b));
	free(b);
	return r;
}

static int set_item(json_t *obj, const char *key, const struct tpm_attest *a,
		    enum tpm_attest_item which)
{
	const uint8_t *d;
	size_t n;

	return tpm_attest_item(a, which, &d, &n) < 0 ? -1 : set_b64(obj, key, d, n);
}

static uint8_t *get_b64(const json_t *obj, const char *key, size_t *ret_len)
{
	const json_t *v = json_object_get(obj, key);
	size_t n = json_string_length(v);
	uint8_t *b = malloc(n + 1);

	if (!b || !json_is_string(v) ||
	    crypto_b64_decode(json_string_value(v), n, b, n + 1, ret_len) < 0) {
		free(b);
		return NULL;
	}
	return b;
}

struct attempt {
	struct tpm_attest *a;
	json_t *evidence;
	json_t *ch;
	uint8_t *blob, *sec, *nonce;
	size_t blob_len, sec_len, nonce_len;
};

static void attempt_free(struct attempt *at)
{
	tpm_attest_free(at->a);
	json_decref(at->evidence);
	json_decref(at->ch);
	free(at->blob);
	free(at->sec);
	free(at->nonce);
	memset(at, 0, sizeof(*at));
}

static json_t *evidence_of(const struct tpm_attest *a)
{
	json_t *ev = json_pack("{s:s, s:s}", "name", "attest-test", "hardware", "HW-attest");

	if (!ev || set_item(ev, "ek_cert", a, TPM_ATTEST_EK_CERT) ||
	    set_item(ev, "ek_public", a, TPM_ATTEST_EK_PUBLIC) ||
	    set_item(ev, "ak_public", a, TPM_ATTEST_AK_PUBLIC)) {
		json_decref(ev);
		return NULL;
	}
	return ev;
}

/* POST /devices/challenge with ev (or the attempt's own evidence). */
static int challenge(struct fetch *f, const char *api, const char *token, struct tpm *t,
		     struct attempt *at, json_t *ev, char **detail)
{
	int r;

	free(*detail);
	*detail = NULL;
	r = tpm_attest_new(t, &at->a);
	if (r < 0)
		return r;
	at->evidence = ev ? ev : evidence_of(at->a);
	if (!at->evidence)
		return -ENOMEM;
	r = fetch_api_device_challenge(f, api, token, at->evidence, &at->ch, detail);
	if (r < 0)
		return r;
	at->blob = get_b64(at->ch, "credential_blob", &at->blob_len);
	at->sec = get_b64(at->ch, "encrypted_secret", &at->sec_len);
	at->nonce = get_b64(at->ch, "nonce", &at->nonce_len);
	return at->blob && at->sec && at->nonce ? 0 : -EPROTO;
}

static json_t *proof_of(const struct attempt *at, const char *pem)
{
	json_t *p = json_pack("{s:O, s:s}", "challenge_id", json_object_get(at->ch, "challenge_id"),
			      "public_key", pem);
	const uint8_t *d;
	size_t n;

	if (!p || set_item(p, "secret", at->a, TPM_ATTEST_SECRET) ||
	    set_item(p, "dk_public", at->a, TPM_ATTEST_DK_PUBLIC) ||
	    set_item(p, "certify_info", at->a, TPM_ATTEST_CERTIFY_INFO) ||
	    set_item(p, "certify_signature", at->a, TPM_ATTEST_CERTIFY_SIGNATURE)) {
		json_decref(p);
		return NULL;
	}
	if (tpm_attest_item(at->a, TPM_ATTEST_QUOTE_INFO, &d, &n) == 0) {
		json_t *q = json_object(), *pcrs = json_object(), *bank;
		const char *name;
		unsigned idx;
		char key[16], hex[130];
		size_t i;

		set_b64(q, "info", d, n);
		set_item(q, "signature", at->a, TPM_ATTEST_QUOTE_SIGNATURE);
		for (i = 0; tpm_attest_pcr(at->a, i, &name, &idx, &d, &n) == 0 && n <= 64; i++) {
			bank = json_object_get(pcrs, name);
			if (!bank)
				json_object_set_new(pcrs, name, bank = json_object());
			crypto_hex(d, n, hex);
			snprintf(key, sizeof(key), "%u", idx);
			json_object_set_new(bank, key, json_string(hex));
		}
		json_object_set_new(q, "pcrs", pcrs);
		json_object_set_new(p, "quote", q);
	}
	return p;
}

/* POST /devices; the API's detail in *detail (malloc()ed) on a refusal. */
static int enrol(struct fetch *f, const char *api, const char *token, json_t *proof, char **id,
		 char **detail)
{
	*id = NULL;
	free(*detail);
	*detail = NULL;
	return fetch_api_device_enrol(f, api, token, proof, id, detail);
}

static json_t *admin_devices(struct fetch *f, const char *api)
{
	char url[512];
	struct fetch_request req = {.method = "GET", .url = url, .max_response = 1 << 20};
	struct fetch_response resp = {0};
	json_t *j = NULL;

	snprintf(url, sizeof(url), "%s/_admin/devices", api);
	if (fetch_request(f, &req, &resp) == 0 && resp.status == 200)
		j = json_loadb((const char *)resp.body.data, resp.body.len, 0, NULL);
	fetch_response_free(&resp);
	return j;
}

static int admin_post(struct fetch *f, const char *api, const char *what, const char *body)
{
	char url[512];
	struct fetch_request req = {.method = "POST",
				    .url = url,
				    .content_type = "application/json",
				    .body = body,
				    .body_len = strlen(body),
				    .max_response = 65536};
	struct fetch_response resp = {0};
	int r;

	snprintf(url, sizeof(url), "%s/_admin/%s", api, what);
	r = fetch_request(f, &req, &resp);
	if (r == 0 && resp.status != 200)
		r = -EIO;
	fetch_response_free(&resp);
	return r;
}

static size_t devices_count(struct fetch *f, const char *api)
{
	json_t *j = admin_devices(f, api);
	size_t n = json_array_size(json_object_get(j, "devices"));

	json_decref(j);
	return n;
}

static char *software_pem(void)
{
	EVP_PKEY *k = EVP_RSA_gen(2048);
	BIO *b = BIO_new(BIO_s_mem());
	char *data, *pem = NULL;
	long n;

	if (k && b && PEM_write_bio_PUBKEY(b, k) == 1 && (n = BIO_get_mem_data(b, &data)) > 0)
		pem = strndup(data, (size_t)n);
	BIO_free(b);
	EVP_PKEY_free(k);
	return pem;
}

static int has(const char *detail, const char *word)
{
	return detail && strstr(detail, word);
}

/* A swtpm provisioned from a CA of its own (scripts/stack tpm2); its TCTI into tcti. */
static int untrusted_tpm(const char *top, const char *stack, const char *cadir, const char *name,
			 char *tcti, size_t len)
{
	char cmd[2048];
	FILE *p;
	int ok;

	/* cadir "": the stack's own CA, a TPM the API trusts. */
	snprintf(cmd, sizeof(cmd), "AZ_STACK_EK_CA='%s' '%s/scripts/stack' tpm2 '%s' '%s'", cadir,
		 top, stack, name);
	p = popen(cmd, "r");
	if (!p)
		return -1;
	ok = fgets(tcti, (int)len, p) != NULL;
	if (pclose(p) != 0 || !ok)
		return -1;
	tcti[strcspn(tcti, "\n")] = '\0';
	return 0;
}

static void untrusted_stop(const char *stack, const char *name)
{
	char path[1024];
	FILE *f;
	int pid = 0;

	snprintf(path, sizeof(path), "%s/pids/tpm-%s", stack, name);
	f = fopen(path, "r");
	if (f && fscanf(f, "%d", &pid) == 1 && pid > 0)
		kill(pid, SIGTERM);
	if (f)
		fclose(f);
	unlink(path);
}

static int open_tpm(const char *tcti, const char *dir, const char *pcrs, struct tpm **ret)
{
	struct tpm_opts o = {
		.tcti = tcti, .wait_seconds = 10, .pcrs = pcrs, .state_dir = dir, .log = tpm_log};

	return tpm_open(&o, ret);
}

int main(void)
{
	const char *tcti = env("TPM_TCTI"), *api = env("API_URL"), *email = env("API_EMAIL");
	const char *pw = env("API_PASSWORD"), *ca = env("STACK_CA"), *top = env("AZ_TOP");
	const char *stack = env("STACK_DIR");
	char dir[] = "/tmp/test_attest.XXXXXX", sub[1024], tcti3[256], name[64], cmd[1200];
	struct fetch_opts fo = {.timeout_ms = 20000, .connect_timeout_ms = 3000, .log = fetch_log};
	struct attempt at = {0};
	struct fetch *f = NULL;
	struct tpm *t = NULL, *t3 = NULL;
	char *token = NULL, *pem = NULL, *soft = NULL, *id = NULL, *detail = NULL;
	json_t *p = NULL, *replay = NULL, *j;
	size_t n0, i;
	time_t exp;
	int r;

	if (!tcti || !api || !email || !pw || !ca || !top || !stack) {
		CHECK(0, "the local stack's environment is set (run through tests/run)");
		return check_done();
	}
	if (!mkdtemp(dir)) {
		CHECK(0, "a temporary folder: %s", strerror(errno));
		return check_done();
	}
	snprintf(name, sizeof(name), "attest%d", (int)getpid());
	fo.ca_file = ca;
	r = fetch_new(&fo, &f);
	r = r ? r : fetch_api_login(f, api, email, pw, &token, &exp);
	CHECK(r == 0 && token, "log in to the API (%d)", r);
	if (r)
		goto out;
	snprintf(sub, sizeof(sub), "%s/a", dir);
	r = open_tpm(tcti, sub, "sha256:7", &t);
	r = r ? r : tpm_enroll(t, "x", 1, &pem);
	CHECK(r == 0 && pem, "a device key in the stack's TPM, bound to PCR 7 (%d)", r);
	if (r)
		goto out;
	n0 = devices_count(f, api);

	/* ---- the honest device */
	r = challenge(f, api, token, t, &at, NULL, &detail);
	CHECK(r == 0, "a challenge for the TPM's EK certificate and AK (%d, %s)", r,
	      detail ? detail : "");
	r = r ? r
	      : tpm_attest_prove(t, at.a, at.blob, at.blob_len, at.sec, at.sec_len, at.nonce,
				 at.nonce_len);
	CHECK(r == 0, "ActivateCredential, Certify and Quote (%d)", r);
	p = r ? NULL : proof_of(&at, pem);
	replay = json_deep_copy(p);
	r = p ? enrol(f, api, token, p, &id, &detail) : -1;
	CHECK(r == 0 && id, "the attested device key enrols: a device id (%d, %s)", r,
	      detail ? detail : "");
	j = admin_devices(f, api);
	{
		json_t *d, *mine = NULL;

		json_array_foreach(json_object_get(j, "devices"), i, d)
		{
			if (id &&
			    !strcmp(json_string_value(json_object_get(d, "device_id")) ?: "", id))
				mine = d;
		}
		CHECK(mine && json_is_true(json_object_get(mine, "attested")) &&
			      json_string_length(json_object_get(mine, "ek_serial")) &&
			      json_equal(json_object_get(mine, "ak_public"),
					 json_object_get(at.evidence, "ak_public")) &&
			      json_is_string(json_object_get(
				      json_object_get(json_object_get(mine, "pcrs"), "sha256"),
				      "7")),
		      "the API records the EK certificate's serial, the AK and the quoted PCR 7");
	}
	json_decref(j);
	free(id);
	id = NULL;
	json_decref(p);
	p = NULL;
	r = replay ? enrol(f, api, token, replay, &id, &detail) : -1;
	CHECK(r == -EPERM && !id && has(detail, "challenge"),
	      "the same proof replayed: 403, no device id (%s)", detail ? detail : "-");
	attempt_free(&at);

	/* ---- a certify over another nonce, then the right one on the spent challenge */
	r = challenge(f, api, token, t, &at, NULL, &detail);
	if (r == 0)
		at.nonce[0] ^= 1;
	r = r ? r
	      : tpm_attest_prove(t, at.a, at.blob, at.blob_len, at.sec, at.sec_len, at.nonce,
				 at.nonce_len);
	p = r ? NULL : proof_of(&at, pem);
	r = p ? enrol(f, api, token, p, &id, &detail) : -1;
	CHECK(r == -EPERM && !id && has(detail, "nonce"),
	      "a certify over a wrong nonce: 403 naming the nonce, no device id (%s)",
	      detail ? detail : "-");
	json_decref(p);
	p = NULL;
	at.nonce[0] ^= 1;
	r = tpm_attest_prove(t, at.a, at.blob, at.blob_len, at.sec, at.sec_len, at.nonce,
			     at.nonce_len);
	p = r ? NULL : proof_of(&at, pem);
	r = p ? enrol(f, api, token, p, &id, &detail) : -1;
	CHECK(r == -EPERM && !id && has(detail, "challenge"),
	      "a challenge is spent by a failed attempt: the right proof after it gets 403 (%s)",
	      detail ? detail : "-");
	json_decref(p);
	p = NULL;
	attempt_free(&at);

	/* ---- a guessed credential secret */
	r = challenge(f, api, token, t, &at, NULL, &detail);
	r = r ? r
	      : tpm_attest_prove(t, at.a, at.blob, at.blob_len, at.sec, at.sec_len, at.nonce,
				 at.nonce_len);
	p = r ? NULL : proof_of(&at, pem);
	if (p) {
		uint8_t guess[32];

		for (i = 0; i < sizeof(guess); i++)
			guess[i] = (uint8_t)(rand() & 0xff);
		set_b64(p, "secret", guess, sizeof(guess));
	}
	r = p ? enrol(f, api, token, p, &id, &detail) : -1;
	CHECK(r == -EPERM && !id && has(detail, "secret"),
	      "a wrong credential secret: 403 naming the secret, no device id (%s)",
	      detail ? detail : "-");
	json_decref(p);
	p = NULL;
	attempt_free(&at);

	/* ---- a software key (openssl) behind a genuine TPM's certify */
	soft = software_pem();
	r = challenge(f, api, token, t, &at, NULL, &detail);
	r = r ? r
	      : tpm_attest_prove(t, at.a, at.blob, at.blob_len, at.sec, at.sec_len, at.nonce,
				 at.nonce_len);
	p = r || !soft ? NULL : proof_of(&at, soft);
	r = p ? enrol(f, api, token, p, &id, &detail) : -1;
	CHECK(r == -EPERM && !id && has(detail, "public_key"),
	      "a software public key: 403, it is not the certified key, no device id (%s)",
	      detail ? detail : "-");
	json_decref(p);
	p = NULL;
	attempt_free(&at);

	/* ---- dk_public altered (fixedTPM cleared) under a genuine certify */
	r = challenge(f, api, token, t, &at, NULL, &detail);
	r = r ? r
	      : tpm_attest_prove(t, at.a, at.blob, at.blob_len, at.sec, at.sec_len, at.nonce,
				 at.nonce_len);
	p = r ? NULL : proof_of(&at, pem);
	if (p) {
		const uint8_t *d;
		uint8_t alt[1024];
		size_t n;

		/* TPM2B_PUBLIC: size(2) type(2) nameAlg(2) objectAttributes(4), fixedTPM 0x2. */
		if (tpm_attest_item(at.a, TPM_ATTEST_DK_PUBLIC, &d, &n) == 0 && n <= sizeof(alt)) {
			memcpy(alt, d, n);
			alt[9] &= (uint8_t)~0x2;
			set_b64(p, "dk_public", alt, n);
		}
	}
	r = p ? enrol(f, api, token, p, &id, &detail) : -1;
	CHECK(r == -EPERM && !id && has(detail, "another key"),
	      "a dk_public other than the certified one: 403, no device id (%s)",
	      detail ? detail : "-");
	json_decref(p);
	p = NULL;
	attempt_free(&at);

	/* ---- quoted PCR values other than the signed ones */
	r = challenge(f, api, token, t, &at, NULL, &detail);
	r = r ? r
	      : tpm_attest_prove(t, at.a, at.blob, at.blob_len, at.sec, at.sec_len, at.nonce,
				 at.nonce_len);
	p = r ? NULL : proof_of(&at, pem);
	json_object_set_new(
		json_object_get(json_object_get(json_object_get(p, "quote"), "pcrs"), "sha256"),
		"7",
		json_string("11111111111111111111111111111111"
			    "11111111111111111111111111111111"));
	r = p ? enrol(f, api, token, p, &id, &detail) : -1;
	CHECK(r == -EPERM && !id && has(detail, "quote"),
	      "PCR values other than the quoted ones: 403, no device id (%s)",
	      detail ? detail : "-");
	json_decref(p);
	p = NULL;
	attempt_free(&at);

	/* ---- an AK that is not restricted */
	{
		json_t *ev;
		uint8_t *ak;
		size_t n;

		r = tpm_attest_new(t, &at.a);
		ev = r ? NULL : evidence_of(at.a);
		ak = ev ? get_b64(ev, "ak_public", &n) : NULL;
		if (ak && n > 9) {
			/* objectAttributes at offset 6..9; restricted is 0x10000. */
			ak[7] &= (uint8_t)~0x01;
			set_b64(ev, "ak_public", ak, n);
		}
		free(ak);
		free(detail);
		detail = NULL;
		r = ev ? fetch_api_device_challenge(f, api, token, ev, &at.ch, &detail) : -1;
		CHECK(r == -EPERM && has(detail, "restricted signing"),
		      "an AK without the restricted attribute: 403 before any challenge (%s)",
		      detail ? detail : "-");
		json_decref(ev);
		attempt_free(&at);
	}

	/* ---- a challenge answered after its lifetime */
	r = admin_post(f, api, "challenge_ttl", "{\"seconds\": 1}");
	r = r ? r : challenge(f, api, token, t, &at, NULL, &detail);
	r = r ? r
	      : tpm_attest_prove(t, at.a, at.blob, at.blob_len, at.sec, at.sec_len, at.nonce,
				 at.nonce_len);
	p = r ? NULL : proof_of(&at, pem);
	sleep(2);
	r = p ? enrol(f, api, token, p, &id, &detail) : -1;
	CHECK(r == -EPERM && !id && has(detail, "expired"),
	      "a proof after the challenge expired: 403, no device id (%s)", detail ? detail : "-");
	admin_post(f, api, "challenge_ttl", "{\"seconds\": 300}");
	json_decref(p);
	p = NULL;
	attempt_free(&at);

	/* ---- a TPM certified by a CA the API does not trust */
	snprintf(sub, sizeof(sub), "%s/otherca", dir);
	r = untrusted_tpm(top, stack, sub, name, tcti3, sizeof(tcti3));
	CHECK(r == 0, "a second swtpm with EK certificates from an untrusted CA (%s)", tcti3);
	snprintf(sub, sizeof(sub), "%s/b", dir);
	r = r ? r : open_tpm(tcti3, sub, NULL, &t3);
	r = r ? r : tpm_enroll(t3, "x", 1, &id); /* id: the PEM, not needed */
	free(id);
	id = NULL;
	r = r ? r : challenge(f, api, token, t3, &at, NULL, &detail);
	CHECK(r == -EPERM && has(detail, "trusted"),
	      "its EK certificate: 403, it does not chain to a trusted manufacturer (%d, %s)", r,
	      detail ? detail : "-");
	attempt_free(&at);

	/* ---- a genuine EK certificate, copied, with another TPM's AK */
	if (t3) {
		struct attempt genuine = {0};

		r = tpm_attest_new(t, &genuine.a);
		at.evidence = evidence_of(genuine.a);
		r = r ? r : tpm_attest_new(t3, &at.a);
		if (r == 0 && at.evidence)
			set_item(at.evidence, "ak_public", at.a, TPM_ATTEST_AK_PUBLIC);
		free(detail);
		detail = NULL;
		r = r ? r : fetch_api_device_challenge(f, api, token, at.evidence, &at.ch, &detail);
		CHECK(r == 0, "a challenge for a copied EK certificate and a foreign AK (%d)", r);
		at.blob = get_b64(at.ch, "credential_blob", &at.blob_len);
		at.sec = get_b64(at.ch, "encrypted_secret", &at.sec_len);
		at.nonce = get_b64(at.ch, "nonce", &at.nonce_len);
		r = at.blob && at.sec && at.nonce
			    ? tpm_attest_prove(t3, at.a, at.blob, at.blob_len, at.sec, at.sec_len,
					       at.nonce, at.nonce_len)
			    : -1;
		CHECK(r == -EACCES, "the other TPM cannot activate the credential (%d)", r);
		CHECK(tpm_attest_item(at.a, TPM_ATTEST_SECRET, &(const uint8_t *){0},
				      &(size_t){0}) == -ENOENT,
		      "and holds no secret to send");
		tpm_attest_free(genuine.a);
		attempt_free(&at);
	}
	/* ---- a TPM with only the high-range ECC P-384 EK certificate */
	{
		char tcti4[256], name4[80], nvcmd[512];
		struct tpm *t4 = NULL;
		char *pem4 = NULL;

		snprintf(name4, sizeof(name4), "%secc", name);
		r = untrusted_tpm(top, stack, "", name4, tcti4, sizeof(tcti4));
		snprintf(nvcmd, sizeof(nvcmd),
			 "TPM2TOOLS_TCTI='%s' tpm2_nvundefine -C p 0x01c00002 >/dev/null 2>&1",
			 tcti4);
		r = r ? r : system(nvcmd);
		CHECK(r == 0, "a trusted swtpm whose RSA EK certificate is removed (%d)", r);
		snprintf(sub, sizeof(sub), "%s/c", dir);
		r = r ? r : open_tpm(tcti4, sub, NULL, &t4);
		r = r ? r : tpm_enroll(t4, "x", 1, &pem4);
		r = r ? r : challenge(f, api, token, t4, &at, NULL, &detail);
		r = r ? r
		      : tpm_attest_prove(t4, at.a, at.blob, at.blob_len, at.sec, at.sec_len,
					 at.nonce, at.nonce_len);
		p = r ? NULL : proof_of(&at, pem4);
		r = p ? enrol(f, api, token, p, &id, &detail) : r;
		CHECK(r == 0 && id,
		      "its P-384 EK (0x01c00016, password-authorised) enrols: a device id (%d, %s)",
		      r, detail ? detail : "");
		n0 += r == 0;
		free(id);
		id = NULL;
		json_decref(p);
		p = NULL;
		attempt_free(&at);
		tpm_close(t4);
		free(pem4);
		untrusted_stop(stack, name4);
	}
	CHECK(devices_count(f, api) == n0 + 1, "the API enrolled the honest devices only");
	CHECK(!strstr(logs, pw), "no password in the log");
out:
	untrusted_stop(stack, name);
	attempt_free(&at);
	json_decref(p);
	json_decref(replay);
	tpm_close(t);
	tpm_close(t3);
	free(token);
	free(pem);
	free(soft);
	free(id);
	free(detail);
	fetch_free(f);
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
	if (system(cmd) != 0)
		fprintf(stderr, "# could not remove %s\n", dir);
	return check_done();
}
