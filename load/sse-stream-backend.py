# Test backend for load/measure-stream-rss.sh (loopback only): every POST gets one
# chunked text/event-stream chat completion of MB megabytes, then usage and [DONE].
# Usage: python3 load/sse-stream-backend.py PORT MB
# A backend that answers every request with one long SSE chat stream of N MB.
import sys, http.server, socketserver
MB = int(sys.argv[2])
chunk = ('data: {"id":"c","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"' + 'x'*900 + '"}}]}\n\n').encode()
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_POST(self):
        n = int(self.headers.get('content-length', 0)); self.rfile.read(n)
        self.send_response(200)
        self.send_header('content-type', 'text/event-stream')
        self.send_header('transfer-encoding', 'chunked')
        self.end_headers()
        total = 0
        buf = chunk * 64
        while total < MB * 1024 * 1024:
            self.wfile.write(b'%x\r\n%s\r\n' % (len(buf), buf)); total += len(buf)
        end = b'data: {"id":"c","choices":[{"index":0,"delta":{},"finish_reason":"stop"}],"usage":{"prompt_tokens":5,"completion_tokens":9}}\n\ndata: [DONE]\n\n'
        self.wfile.write(b'%x\r\n%s\r\n0\r\n\r\n' % (len(end), end))
    def log_message(self, *a): pass
socketserver.TCPServer.allow_reuse_address = True
with socketserver.TCPServer(("127.0.0.1", int(sys.argv[1])), H) as s:
    s.serve_forever()
