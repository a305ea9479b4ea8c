/*
 * {{name}}: a WAGI module. The request comes in the CGI way: the method, path and
 * query in environment variables, the body on stdin. The response goes out on stdout:
 * header lines, an empty line, then the body.
 */
#include <stdio.h>
#include <stdlib.h>

static const char *env(const char *name, const char *fallback) {
    const char *value = getenv(name);
    return value && *value ? value : fallback;
}

int main(void) {
    printf("Content-Type: text/plain; charset=utf-8\n");
    printf("\n");
    printf("%s from {{name}}!\n", env("GREETING", "Hello"));
    printf("You asked for %s %s\n", env("REQUEST_METHOD", "GET"), env("PATH_INFO", "/"));
    return 0;
}
