#!/usr/bin/env python3
"""Read-only Git server over HTTPS for the end-to-end test: Git's own `git http-backend` (smart HTTP,
protocol v2) behind a small TLS front end, in place of Gitea's Git server for the workflows' checkout step.

Like Gitea for a private repository, it answers only requests that carry the job token: the header
`Authorization: token TOKEN` (what the workflows send), `Bearer TOKEN`, or Basic auth with the token as the
password. Anything else gets 401. Only fetches are served (info/refs and git-upload-pack); pushes get 403.
The token is read from --token-file at every request, so the test can give each job run its own token.
One log line per request (method, path, auth scheme, status), never the token.
"""

import argparse
import base64
import hmac
import http.server
import os
import re
import ssl
import subprocess
import sys
import threading

# /OWNER/REPO.git/info/refs?service=git-upload-pack, /OWNER/REPO.git/git-upload-pack
FETCH_PATH = re.compile(r"^/[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+\.git/(info/refs|git-upload-pack|HEAD)$")
PUSH_PATH = re.compile(r"^/[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+\.git/(git-receive-pack)$")


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "e2e-git-server"

    def log_message(self, fmt, *args):  # quiet default logging; see log_request
        pass

    def _log(self, status, scheme):
        with self.server.log_lock:
            print(f"{self.command} {self.path.split('?')[0]} auth={scheme} status={status}",
                  file=self.server.log, flush=True)

    def _auth_scheme(self):
        """Return (scheme, ok): how the client authenticated and whether the token matched."""
        header = self.headers.get("Authorization", "")
        try:
            with open(self.server.token_file, encoding="utf-8") as f:
                token = f.read().strip()
        except OSError:
            return "none", False
        if not token:
            return "none", False
        scheme, _, value = header.partition(" ")
        scheme = scheme.lower()
        value = value.strip()
        if scheme in ("token", "bearer"):
            return scheme, hmac.compare_digest(value.encode(), token.encode())
        if scheme == "basic":
            try:
                _, _, password = base64.b64decode(value).decode().partition(":")
            except Exception:
                return scheme, False
            return scheme, hmac.compare_digest(password.encode(), token.encode())
        return scheme or "none", False

    def _send(self, status, body=b"", headers=()):
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _body(self):
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    self.rfile.readline()
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _handle(self):
        path, _, query = self.path.partition("?")
        scheme, ok = self._auth_scheme()
        if not ok:
            self._log(401, scheme)
            self._send(401, b"authentication required\n", [("WWW-Authenticate", 'Basic realm="e2e git"')])
            return
        if PUSH_PATH.match(path) or "service=git-receive-pack" in query:
            self._log(403, scheme)
            self._send(403, b"read-only\n")
            return
        if not FETCH_PATH.match(path) or ".." in path:
            self._log(404, scheme)
            self._send(404, b"not found\n")
            return
        body = self._body() if self.command == "POST" else b""
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "GIT_PROJECT_ROOT": self.server.project_root,
            "GIT_HTTP_EXPORT_ALL": "1",
            "GATEWAY_INTERFACE": "CGI/1.1",
            "REQUEST_METHOD": self.command,
            "PATH_INFO": path,
            "QUERY_STRING": query,
            "CONTENT_TYPE": self.headers.get("Content-Type", ""),
            "CONTENT_LENGTH": str(len(body)),
            "REMOTE_ADDR": self.client_address[0],
            "REMOTE_USER": "job",
            # Protocol v2 (fetch by commit id) is negotiated through this header.
            "GIT_PROTOCOL": self.headers.get("Git-Protocol", ""),
            "HTTP_CONTENT_ENCODING": self.headers.get("Content-Encoding", ""),
        }
        proc = subprocess.run(["git", "http-backend"], input=body, env=env, capture_output=True, check=False)
        head, sep, payload = proc.stdout.partition(b"\r\n\r\n")
        if not sep:
            head, sep, payload = proc.stdout.partition(b"\n\n")
        if proc.returncode != 0 or not sep:
            self._log(500, scheme)
            self._send(500, proc.stderr[-2000:] or b"git http-backend failed\n")
            return
        status, headers = 200, []
        for line in head.decode("latin-1").splitlines():
            k, _, v = line.partition(":")
            if k.lower() == "status":
                status = int(v.strip().split()[0])
            elif k:
                headers.append((k, v.strip()))
        self._log(status, scheme)
        self._send(status, payload, headers)

    do_GET = do_POST = do_HEAD = _handle


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--listen", default="127.0.0.1:0", help="HOST:PORT (default 127.0.0.1, any free port)")
    p.add_argument("--cert", required=True, help="PEM certificate (chain) of the server")
    p.add_argument("--key", required=True, help="PEM private key")
    p.add_argument("--project-root", required=True, help="directory holding OWNER/REPO.git bare repositories")
    p.add_argument("--token-file", required=True, help="file holding the job token clients must send")
    p.add_argument("--log", help="request log (default stderr)")
    p.add_argument("--port-file", help="write the bound port here once listening")
    args = p.parse_args()

    host, _, port = args.listen.rpartition(":")
    server = http.server.ThreadingHTTPServer((host, int(port)), Handler)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(args.cert, args.key)
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    server.project_root = os.path.abspath(args.project_root)
    server.token_file = args.token_file
    server.log = open(args.log, "a", encoding="utf-8") if args.log else sys.stderr
    server.log_lock = threading.Lock()
    if args.port_file:
        with open(args.port_file, "w", encoding="utf-8") as f:
            f.write(f"{server.server_address[1]}\n")
    server.serve_forever()


if __name__ == "__main__":
    main()
