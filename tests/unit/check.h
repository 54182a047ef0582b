/*
 * check.h - the unit tests' few assertions. Each CHECK prints one
 * "ok N - what" or "not ok N - what (file:line)" line; tests/run counts
 * them. check_done() returns the exit status of the test program.
 */
#ifndef AZAION_CHECK_H
#define AZAION_CHECK_H

#include <stdio.h>
#include <stdlib.h>

static int check_n, check_failed;

#define CHECK(cond, ...)                                                   \
	do {                                                               \
		int check_ok_ = !!(cond);                                  \
		check_n++;                                                 \
		if (!check_ok_)                                            \
			check_failed++;                                    \
		printf("%sok %d - ", check_ok_ ? "" : "not ", check_n);    \
		printf(__VA_ARGS__);                                       \
		if (!check_ok_)                                            \
			printf(" (%s:%d: %s)", __FILE__, __LINE__, #cond); \
		printf("\n");                                              \
		fflush(stdout);                                            \
	} while (0)

/* Counts many sub-checks as one line: fails with the first bad one. */
#define CHECK_ALL(count_bad, total, ...) CHECK((count_bad) == 0, __VA_ARGS__)

static inline int check_done(void)
{
	if (check_n == 0) {
		printf("not ok 1 - the test program ran no check\n");
		return 1;
	}
	return check_failed ? 1 : 0;
}

#endif
