/*
 * check.h - the whole-file check of a format without tags whose API holds
 * no chunk hashes but whose catalog gives the plaintext's sha256 (a legacy
 * resource, docs/trust.md section 4): its stream read once, in order, from
 * a source, decrypted through its format's table and hashed, before any
 * byte of it is served. On the way it takes the SHA-256 of every chunk of
 * the big part, so that later reads can be checked against the bytes that
 * were checked whole.
 *
 * Errors are 0 or a negative errno with a message the caller owns; the
 * check logs nothing.
 */
#ifndef AZAION_CHECK_H
#define AZAION_CHECK_H

#include <stddef.h>
#include <stdint.h>

#include "fs/format.h"
#include "fs/src.h"

/*
 * Reads b (the big part, through src) after prefix (the stream's bytes
 * before it), decrypts it with ff and compares the plaintext's SHA-256
 * with want. On a match *ret_list gets the SHA-256 of each chunk_size
 * bytes of b (*ret_count entries, malloc()ed). -EBADMSG for a mismatch,
 * the source's or the format's error otherwise.
 */
int check_whole(struct src *src, const struct src_blob *b, const struct format_file *ff,
		const uint8_t *prefix, size_t prefix_len, const uint8_t want[32],
		uint32_t chunk_size, uint8_t **ret_list, size_t *ret_count, char **ret_msg);

#endif
