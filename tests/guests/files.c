/*
 * files: a test guest that tries file operations named in its query string and reports
 * the result, so tests can check what a guest can and cannot reach.
 *   ?read=PATH    print the file's contents, or the error
 *   ?write=PATH   try to create PATH, print "wrote" or the error
 *   ?list=DIR     print the names in DIR, one per line, or the error
 */
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void report_error(const char *what, const char *path) {
    printf("error: %s %s: %s\n", what, path, strerror(errno));
}

int main(void) {
    const char *query = getenv("QUERY_STRING");
    printf("Content-Type: text/plain\n\n");
    if (query == NULL) return 0;
    if (strncmp(query, "read=", 5) == 0) {
        FILE *file = fopen(query + 5, "rb");
        if (file == NULL) { report_error("read", query + 5); return 0; }
        char buffer[4096];
        size_t got;
        while ((got = fread(buffer, 1, sizeof buffer, file)) > 0) fwrite(buffer, 1, got, stdout);
        fclose(file);
    } else if (strncmp(query, "write=", 6) == 0) {
        FILE *file = fopen(query + 6, "wb");
        if (file == NULL) { report_error("write", query + 6); return 0; }
        fputs("written by a guest", file);
        fclose(file);
        printf("wrote\n");
    } else if (strncmp(query, "list=", 5) == 0) {
        DIR *dir = opendir(query + 5);
        if (dir == NULL) { report_error("list", query + 5); return 0; }
        struct dirent *entry;
        while ((entry = readdir(dir)) != NULL)
            if (entry->d_name[0] != '.') printf("%s\n", entry->d_name);
        closedir(dir);
    }
    return 0;
}
