/*
 * fuzz.h - what every libFuzzer target of tests/fuzz shares: the entry
 * point's prototype and quiet logging (the parsers' warnings about
 * hostile input are expected by the thousand).
 */
#ifndef AZAION_FUZZ_H
#define AZAION_FUZZ_H

#include <stddef.h>
#include <stdint.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

#endif
