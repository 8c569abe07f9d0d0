/* A test agent for tests/wine/smoke.sh (Windows, built with mingw-w64).
 *
 *   agent.exe [args...]    record the task variables and the arguments, confirm, write a result
 *   agent.exe tree         record, start a "beat" child, then hang (the timeout must kill both)
 *   agent.exe spawn        record, start a "beat" child, confirm and return (the child lives on)
 *   agent.exe beat FILE    append a line to FILE every 100 ms, forever
 *
 * Records go to RESULTS_DIR\..\seen-<TASK_ID>\<NAME>, as UTF-8, byte for byte. */
#include <windows.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <wchar.h>

static wchar_t results[1024], seen[1200], id[256];

static void write_file(const wchar_t *path, const char *bytes, DWORD len) {
    HANDLE h = CreateFileW(path, GENERIC_WRITE, 0, NULL, CREATE_ALWAYS, 0, NULL);
    DWORD written;
    WriteFile(h, bytes, len, &written, NULL);
    CloseHandle(h);
}

static void record(const wchar_t *name, const wchar_t *value, int len) {
    wchar_t path[2048];
    swprintf(path, 2048, L"%ls\\%ls", seen, name);
    int n = WideCharToMultiByte(CP_UTF8, 0, value, len, NULL, 0, NULL, NULL);
    char *buf = malloc(n + 1);
    WideCharToMultiByte(CP_UTF8, 0, value, len, buf, n, NULL, NULL);
    write_file(path, buf, n);
    free(buf);
}

static void record_env(const wchar_t *name) {
    static wchar_t value[200000];
    DWORD n = GetEnvironmentVariableW(name, value, 200000);
    if (n == 0 && GetLastError() == ERROR_ENVVAR_NOT_FOUND)
        record(name, L"<unset>", 7);
    else
        record(name, value, (int)n);
}

static void start_beat(void) {
    wchar_t self[1024], cmd[4096];
    GetModuleFileNameW(NULL, self, 1024);
    swprintf(cmd, 4096, L"\"%ls\" beat \"%ls\\beat\"", self, seen);
    STARTUPINFOW si = {sizeof si};
    PROCESS_INFORMATION pi;
    CreateProcessW(NULL, cmd, NULL, NULL, FALSE, 0, NULL, NULL, &si, &pi);
}

static void confirm(void) {
    wchar_t path[1400];
    swprintf(path, 1400, L"%ls\\%ls.started", results, id);
    write_file(path, "", 0);
}

int wmain(int argc, wchar_t **argv) {
    if (argc >= 3 && wcscmp(argv[1], L"beat") == 0) {
        for (;;) {
            HANDLE h = CreateFileW(argv[2], FILE_APPEND_DATA, FILE_SHARE_READ, NULL, OPEN_ALWAYS, 0, NULL);
            DWORD written;
            WriteFile(h, "x\n", 2, &written, NULL);
            CloseHandle(h);
            Sleep(100);
        }
    }
    GetEnvironmentVariableW(L"RESULTS_DIR", results, 1024);
    GetEnvironmentVariableW(L"TASK_ID", id, 256);
    swprintf(seen, 1200, L"%ls\\..\\seen-%ls", results, id);
    CreateDirectoryW(seen, NULL);
    const wchar_t *names[] = {L"TASK_ID", L"TASK_JSON", L"TASK_DESCRIPTION", L"TASK_FILE",
                              L"RESULTS_DIR", L"WAKE_ATTEMPT"};
    for (int i = 0; i < 6; i++) record_env(names[i]);
    wchar_t count[16];
    swprintf(count, 16, L"%d", argc - 1);
    record(L"argc", count, (int)wcslen(count));
    for (int i = 1; i < argc; i++) {
        wchar_t name[16];
        swprintf(name, 16, L"arg%d", i);
        record(name, argv[i], (int)wcslen(argv[i]));
    }
    if (argc >= 2 && wcscmp(argv[1], L"tree") == 0) {
        start_beat();
        Sleep(600000);
        return 0;
    }
    if (argc >= 2 && wcscmp(argv[1], L"spawn") == 0) {
        start_beat();
        confirm();
        return 0;
    }
    confirm();
    wchar_t tmp[1400], path[1400];
    swprintf(tmp, 1400, L"%ls\\.%ls.tmp", results, id);
    swprintf(path, 1400, L"%ls\\%ls.json", results, id);
    const char *result = "{\"status\":\"success\",\"output\":\"done on windows\"}";
    write_file(tmp, result, (DWORD)strlen(result));
    MoveFileExW(tmp, path, MOVEFILE_REPLACE_EXISTING);
    return 0;
}
