/*
 * msg.h - the words a failing call hands to its caller. A module that
 * knows why a call failed says so in an operator's words, in a malloc()ed
 * message the caller owns; the edge that answers the call (the FUSE
 * operations, the side endpoint, azaionctl, start-up) logs it once, or
 * sends it back. Modules below the edges log only at debug, apart from
 * events no caller sees (docs/architecture.md, "Errors and messages").
 */
#ifndef AZAION_MSG_H
#define AZAION_MSG_H

/*
 * Replaces *ret_msg (freed first) with the formatted text; NULL when
 * memory runs out, which the caller reads as "no message". A NULL
 * ret_msg (the caller wants no words) is left alone.
 */
void msg_set(char **ret_msg, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* The formatted text, malloc()ed; NULL when memory runs out. */
char *msg_fmt(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* msg, or strerror(-err) when there is none: what an edge logs. */
const char *msg_or(const char *msg, int err);

#endif
