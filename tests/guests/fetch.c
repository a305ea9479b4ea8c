/* Fetches the URL in QUERY_STRING with WAGI's outbound HTTP (wasi_experimental_http),
   using the request's method and body, and prints what came back. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define HTTP(name) __attribute__((import_module("wasi_experimental_http"), import_name(name)))
HTTP("req") uint32_t req(const char *url, size_t url_len, const char *method, size_t method_len,
                         const char *headers, size_t headers_len, const char *body,
                         size_t body_len, uint16_t *status, uint32_t *handle);
HTTP("close") uint32_t close_response(uint32_t handle);
HTTP("header_get") uint32_t header_get(uint32_t handle, const char *name, size_t name_len,
                                       char *value, size_t value_len, size_t *written);
HTTP("headers_get_all") uint32_t headers_get_all(uint32_t handle, char *buffer, size_t length,
                                                 size_t *written);
HTTP("body_read") uint32_t body_read(uint32_t handle, char *buffer, size_t length,
                                     size_t *written);

int main(void) {
    const char *url = getenv("QUERY_STRING");
    const char *method = getenv("REQUEST_METHOD");
    const char *headers = "x-test: yes\nHost: evil.example\n";
    static char body[65536];
    size_t body_len = fread(body, 1, sizeof body, stdin);
    uint16_t status = 0;
    uint32_t handle = 0;
    uint32_t error = req(url, strlen(url), method, strlen(method), headers, strlen(headers), body,
                         body_len, &status, &handle);
    printf("Content-Type: text/plain\n\n");
    if (error) {
        printf("error %u\n", error);
        return 0;
    }
    printf("status %u\n", status);
    if (getenv("TWICE")) { /* a second request while the first response is open */
        uint16_t second_status = 0;
        uint32_t second = 0;
        error = req(url, strlen(url), method, strlen(method), "", 0, "", 0, &second_status,
                    &second);
        printf("second %u %u\n", error, second_status);
    }
    char value[256];
    size_t written = 0;
    error = header_get(handle, "X-Echo", 6, value, sizeof value, &written);
    printf("x-echo %u %.*s\n", error, (int)written, value);
    error = header_get(handle, "X-Echo", 6, value, 1, &written);
    printf("small buffer %u\n", error);
    error = header_get(handle, "X-Missing", 9, value, sizeof value, &written);
    printf("missing %u\n", error);
    static char all[4096];
    error = headers_get_all(handle, all, sizeof all, &written);
    printf("all headers %u %s\n", error, strstr(all, "x-echo:yes\n") ? "has x-echo" : "no x-echo");
    printf("body ");
    char chunk[5]; /* in small pieces, as a stream */
    do {
        written = 0;
        body_read(handle, chunk, sizeof chunk, &written);
        fwrite(chunk, 1, written, stdout);
    } while (written);
    uint32_t first = close_response(handle), second = close_response(handle);
    printf("\nclose %u %u\n", first, second);
    return 0;
}
