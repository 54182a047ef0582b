/*
 * fuzz_f1.c - format 1's parts: a whole CBC buffer as the API answers a
 * small part or cdn.yaml (f1_decrypt), the plaintext size from the last
 * 32 bytes of E (f1_plain_size) and range decryption of blocks
 * (f1_decrypt_blocks), all on hostile bytes under a fixed key.
 */
#include <stdlib.h>
#include <string.h>

#include "crypto/crypto.h"
#include "tests/fuzz/fuzz.h"

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static const uint8_t key[CRYPTO_KEY_SIZE] = {9, 8, 7};
	uint64_t e_size = 0, plain;
	uint8_t *out;
	size_t len, n;

	out = malloc(size ? size : 1);
	if (!out)
		return 0;
	if (f1_decrypt(key, data, size, out, &len) == 0 && (size < 32 || len > size - 16))
		abort();
	if (size >= 40) {
		memcpy(&e_size, data + 32, sizeof(e_size));
		/* A valid padding removes 1 to 16 bytes after the IV. */
		if (f1_plain_size(key, data, e_size, &plain) == 0 &&
		    (e_size < 32 || e_size % 16 || plain > e_size - 17 || plain < e_size - 32))
			abort();
	}
	n = size / 16 * 16;
	if (n >= 32)
		f1_decrypt_blocks(key, data, n, out);
	f1_decrypt_blocks(key, data, size, out);
	free(out);
	return 0;
}
