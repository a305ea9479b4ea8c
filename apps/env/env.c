/*
 * env: shows what a WAGI module receives. Prints its arguments, every environment
 * variable (sorted, so the output is stable) and the request body it read on stdin.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

extern char **environ;

static int compare(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

int main(int argc, char **argv) {
    printf("Content-Type: text/plain; charset=utf-8\n\n");

    printf("## argv\n");
    for (int i = 0; i < argc; i++) printf("argv[%d]=%s\n", i, argv[i]);

    size_t count = 0;
    while (environ[count]) count++;
    char **sorted = malloc(count * sizeof *sorted);
    if (sorted == NULL) return 1;
    memcpy(sorted, environ, count * sizeof *sorted);
    qsort(sorted, count, sizeof *sorted, compare);
    printf("## env\n");
    for (size_t i = 0; i < count; i++) printf("%s\n", sorted[i]);
    free(sorted);

    printf("## stdin\n");
    char buffer[4096];
    size_t read;
    while ((read = fread(buffer, 1, sizeof buffer, stdin)) > 0) fwrite(buffer, 1, read, stdout);
    return 0;
}
