/*
 * guestbook: a small but real CGI app.
 *
 *   GET  {SCRIPT_NAME}/              a page greeting the visitor, with a form
 *   POST {SCRIPT_NAME}/              reads the form (name, note), stores both in
 *                                    cookies and redirects back (303 See Other)
 *   GET  {SCRIPT_NAME}/static/FILE   serves FILE from the folder mounted at /static
 *
 * State lives in the visitor's cookies, since a guest's mounts are read-only.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_BODY 4096
#define MAX_NAME 64
#define MAX_NOTE 280

static const char *env(const char *name) {
    const char *value = getenv(name);
    return value ? value : "";
}

static int hex_value(int c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* Decode application/x-www-form-urlencoded text of length `length` into `out`. */
static void url_decode(const char *text, size_t length, char *out, size_t size) {
    size_t used = 0;
    for (size_t i = 0; i < length && used + 1 < size; i++) {
        if (text[i] == '+') {
            out[used++] = ' ';
        } else if (text[i] == '%' && i + 2 < length && hex_value(text[i + 1]) >= 0 &&
                   hex_value(text[i + 2]) >= 0) {
            out[used++] = (char)(hex_value(text[i + 1]) * 16 + hex_value(text[i + 2]));
            i += 2;
        } else {
            out[used++] = text[i];
        }
    }
    out[used] = '\0';
}

/* Percent-encode everything but unreserved characters: safe in a cookie value. */
static void url_encode(const char *text, char *out, size_t size) {
    static const char hex[] = "0123456789ABCDEF";
    size_t used = 0;
    for (const unsigned char *p = (const unsigned char *)text; *p && used + 4 < size; p++) {
        if ((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
            *p == '-' || *p == '_' || *p == '.' || *p == '~') {
            out[used++] = (char)*p;
        } else {
            out[used++] = '%';
            out[used++] = hex[*p >> 4];
            out[used++] = hex[*p & 15];
        }
    }
    out[used] = '\0';
}

/* Find `name` in "a=1&b=2" (separator '&') or "a=1; b=2" (separator ';'), decoded. */
static int find_field(const char *text, char separator, const char *name, char *out, size_t size) {
    size_t name_length = strlen(name);
    const char *p = text;
    while (*p) {
        while (*p == ' ' || *p == separator) p++;
        const char *end = strchr(p, separator);
        if (end == NULL) end = p + strlen(p);
        if ((size_t)(end - p) > name_length && strncmp(p, name, name_length) == 0 &&
            p[name_length] == '=') {
            const char *value = p + name_length + 1;
            url_decode(value, (size_t)(end - value), out, size);
            return 1;
        }
        p = end;
    }
    return 0;
}

static void print_html(const char *text) {
    for (const char *p = text; *p; p++) {
        switch (*p) {
        case '<': fputs("&lt;", stdout); break;
        case '>': fputs("&gt;", stdout); break;
        case '&': fputs("&amp;", stdout); break;
        case '"': fputs("&quot;", stdout); break;
        case '\'': fputs("&#39;", stdout); break;
        default: putchar(*p);
        }
    }
}

static int fail(int status, const char *reason, const char *detail) {
    printf("Status: %d %s\nContent-Type: text/plain; charset=utf-8\n\n%s\n", status, reason, detail);
    return 0;
}

static int show_page(void) {
    char name[MAX_NAME * 3 + 1] = "", note[MAX_NOTE * 3 + 1] = "";
    const char *cookies = env("HTTP_COOKIE");
    int known = find_field(cookies, ';', "guest_name", name, sizeof name) && name[0];
    find_field(cookies, ';', "guest_note", note, sizeof note);
    const char *base = env("SCRIPT_NAME");

    printf("Content-Type: text/html; charset=utf-8\n\n");
    printf("<!doctype html>\n<html><head><title>Guestbook</title>\n");
    printf("<link rel=\"stylesheet\" href=\"%s/static/style.css\"></head><body>\n", base);
    if (known) {
        printf("<h1>Welcome back, ");
        print_html(name);
        printf("!</h1>\n<p>Your last note: <q>");
        print_html(note);
        printf("</q></p>\n");
    } else {
        printf("<h1>Sign the guestbook</h1>\n");
    }
    printf("<form method=\"post\" action=\"%s/\">\n", base);
    printf("<label>Name <input name=\"name\" maxlength=\"%d\" required></label>\n", MAX_NAME);
    printf("<label>Note <input name=\"note\" maxlength=\"%d\"></label>\n", MAX_NOTE);
    printf("<button>Sign</button>\n</form>\n</body></html>\n");
    return 0;
}

static int sign(void) {
    if (strncmp(env("CONTENT_TYPE"), "application/x-www-form-urlencoded", 33) != 0)
        return fail(415, "Unsupported Media Type", "send the form as application/x-www-form-urlencoded");
    long length = strtol(env("CONTENT_LENGTH"), NULL, 10);
    if (length < 0 || length > MAX_BODY) return fail(413, "Content Too Large", "the form is too large");

    static char body[MAX_BODY + 1];
    size_t got = fread(body, 1, (size_t)length, stdin);
    body[got] = '\0';

    char name[MAX_BODY + 1], note[MAX_BODY + 1] = "";
    if (!find_field(body, '&', "name", name, sizeof name) || !name[0])
        return fail(400, "Bad Request", "the form needs a name");
    find_field(body, '&', "note", note, sizeof note);
    if (strlen(name) > MAX_NAME || strlen(note) > MAX_NOTE)
        return fail(400, "Bad Request", "name or note is too long");

    char encoded_name[MAX_NAME * 3 + 1], encoded_note[MAX_NOTE * 3 + 1];
    url_encode(name, encoded_name, sizeof encoded_name);
    url_encode(note, encoded_note, sizeof encoded_note);
    const char *base = env("SCRIPT_NAME");
    const char *path = base[0] ? base : "/";
    printf("Status: 303 See Other\n");
    printf("Location: %s/\n", base);
    printf("Set-Cookie: guest_name=%s; Path=%s; HttpOnly; SameSite=Lax\n", encoded_name, path);
    printf("Set-Cookie: guest_note=%s; Path=%s; HttpOnly; SameSite=Lax\n", encoded_note, path);
    printf("Content-Type: text/plain; charset=utf-8\n\nThanks, %s!\n", name);
    return 0;
}

static const char *content_type(const char *file) {
    const char *dot = strrchr(file, '.');
    if (dot == NULL) return "application/octet-stream";
    if (strcmp(dot, ".css") == 0) return "text/css; charset=utf-8";
    if (strcmp(dot, ".html") == 0) return "text/html; charset=utf-8";
    if (strcmp(dot, ".txt") == 0) return "text/plain; charset=utf-8";
    if (strcmp(dot, ".png") == 0) return "image/png";
    if (strcmp(dot, ".svg") == 0) return "image/svg+xml";
    return "application/octet-stream";
}

static int serve_file(const char *relative) {
    if (relative[0] == '\0' || strstr(relative, "..") != NULL)
        return fail(404, "Not Found", "no such file");
    char path[512];
    snprintf(path, sizeof path, "/static/%s", relative);
    FILE *file = fopen(path, "rb");
    if (file == NULL) return fail(404, "Not Found", errno == ENOENT ? "no such file" : strerror(errno));
    printf("Content-Type: %s\n\n", content_type(relative));
    char buffer[4096];
    size_t read;
    while ((read = fread(buffer, 1, sizeof buffer, file)) > 0) fwrite(buffer, 1, read, stdout);
    fclose(file);
    return 0;
}

int main(void) {
    const char *method = env("REQUEST_METHOD");
    const char *path = env("PATH_INFO");
    if (strncmp(path, "/static/", 8) == 0) {
        if (strcmp(method, "GET") != 0 && strcmp(method, "HEAD") != 0)
            return fail(405, "Method Not Allowed", "static files are read-only");
        return serve_file(path + 8);
    }
    if (path[0] != '\0' && strcmp(path, "/") != 0) return fail(404, "Not Found", "no such page");
    if (strcmp(method, "POST") == 0) return sign();
    if (strcmp(method, "GET") == 0 || strcmp(method, "HEAD") == 0) return show_page();
    printf("Allow: GET, HEAD, POST\n");
    return fail(405, "Method Not Allowed", "use GET or POST");
}
