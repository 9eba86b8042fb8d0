// crib-grpcgo: a grpc-go client for crib's gateway tests. The kubelet, critest and crictl
// all speak grpc-go, so the gateway's own HTTP/2 server is driven by the real thing.
//
// It holds ONE ClientConn on the gateway's UNIX socket for its whole life. Requests come
// as JSON lines on stdin, each run in its own goroutine; results go out as JSON lines on
// stdout, in the order they finish. Messages are raw bytes (hex) both ways: the Python
// side builds and checks them with the independent cri_api stubs, so no generated Go code
// is needed.
//
//	{"id": "a", "method": "/runtime.v1.RuntimeService/Version", "request": "<hex>",
//	 "timeout_ms": 5000}                       a unary call
//	{"id": "b", "method": "...", "stream": true, "max_messages": 3}
//	                                           server streaming, read until 3 messages
//	                                           (then cancelled), the end, or the timeout
//	                                           ("hold_ms": 500 first waits, reading nothing)
//	{"id": "c", "cancel": "b"}                 cancel call b (its own result follows)
//	{"id": "d", "stats": true}                 dials and frames seen so far
//
// "wait_for_ready": true makes a call wait for a connection (grpc.WaitForReady) instead
// of failing at once while grpc-go is between connections.
//
// The socket is wrapped to count frames both ways (PING, PING ACK, GOAWAY, ...), so a
// test sees keepalive pings leave and their answers arrive.
package main

import (
	"bufio"
	"context"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/status"
)

// raw is a message as bytes; rawCodec passes it through untouched.
type raw struct{ b []byte }

type rawCodec struct{}

func (rawCodec) Marshal(v interface{}) ([]byte, error) { return v.(*raw).b, nil }
func (rawCodec) Unmarshal(data []byte, v interface{}) error {
	v.(*raw).b = append([]byte(nil), data...)
	return nil
}
func (rawCodec) Name() string { return "proto" }

type request struct {
	ID          string `json:"id"`
	Method      string `json:"method"`
	Request     string `json:"request"`
	TimeoutMs   int    `json:"timeout_ms"`
	Stream      bool   `json:"stream"`
	MaxMessages int    `json:"max_messages"`
	Cancel      string `json:"cancel"`
	Stats       bool   `json:"stats"`
	HoldMs      int    `json:"hold_ms"`
	// WaitForReady: wait for a connection instead of failing fast while there is none.
	WaitForReady bool `json:"wait_for_ready"`
}

type result struct {
	ID        string           `json:"id"`
	Code      int              `json:"code"`
	CodeName  string           `json:"code_name"`
	Message   string           `json:"message"`
	Response  string           `json:"response,omitempty"`
	Messages  []string         `json:"messages,omitempty"`
	ElapsedMs float64          `json:"elapsed_ms"`
	Dials     int64            `json:"dials"`
	Frames    map[string]int64 `json:"frames,omitempty"`
	Error     string           `json:"error,omitempty"`
}

// HTTP/2 frame types (RFC 9113 section 6) by the names the results use.
var frameNames = map[byte]string{0: "DATA", 1: "HEADERS", 3: "RST_STREAM", 4: "SETTINGS",
	6: "PING", 7: "GOAWAY", 8: "WINDOW_UPDATE", 9: "CONTINUATION"}

// counter parses one direction of the byte stream into frames and counts them.
type counter struct {
	prefix string
	skip   int // the client preface (24 bytes) precedes the client's frames
	head   []byte
	left   int // payload bytes of the current frame still to pass
	mu     *sync.Mutex
	counts map[string]int64
}

func (c *counter) feed(p []byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for len(p) > 0 {
		if c.skip > 0 {
			n := min(c.skip, len(p))
			c.skip -= n
			p = p[n:]
			continue
		}
		if c.left > 0 {
			n := min(c.left, len(p))
			c.left -= n
			p = p[n:]
			continue
		}
		n := min(9-len(c.head), len(p))
		c.head = append(c.head, p[:n]...)
		p = p[n:]
		if len(c.head) == 9 {
			name := frameNames[c.head[3]]
			if name == "" {
				name = fmt.Sprintf("TYPE%d", c.head[3])
			}
			if (c.head[3] == 6 || c.head[3] == 4) && c.head[4]&1 != 0 {
				name += "_ACK"
			}
			c.counts[c.prefix+name]++
			c.left = int(c.head[0])<<16 | int(c.head[1])<<8 | int(c.head[2])
			c.counts[c.prefix+name+"_bytes"] += int64(c.left)
			c.head = c.head[:0]
		}
	}
}

func min(a, b int) int {
	if a < b {
		return a
	}
	return b
}

type countingConn struct {
	net.Conn
	out, in *counter
}

func (c countingConn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	c.out.feed(p[:n])
	return n, err
}

func (c countingConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.in.feed(p[:n])
	return n, err
}

func main() {
	socket := flag.String("socket", "", "the gateway's UNIX socket")
	keepaliveMs := flag.Int("keepalive-ms", 0, "keepalive.ClientParameters.Time (0: off)")
	keepaliveTimeoutMs := flag.Int("keepalive-timeout-ms", 5000, "keepalive Timeout")
	maxSendMiB := flag.Int("max-send-mib", 16, "largest request (the kubelet's is 16 MiB)")
	flag.Parse()

	var dials int64
	var mu sync.Mutex
	counts := map[string]int64{}
	dialer := func(ctx context.Context, _ string) (net.Conn, error) {
		conn, err := (&net.Dialer{}).DialContext(ctx, "unix", *socket)
		if err != nil {
			return nil, err
		}
		atomic.AddInt64(&dials, 1)
		return countingConn{conn,
			&counter{prefix: "sent_", skip: 24, mu: &mu, counts: counts},
			&counter{prefix: "received_", mu: &mu, counts: counts}}, nil
	}
	// The kubelet's remote runtime client: 16 MiB messages both ways, its own dialer.
	options := []grpc.DialOption{grpc.WithInsecure(), grpc.WithContextDialer(dialer),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(16<<20),
			grpc.MaxCallSendMsgSize(*maxSendMiB<<20), grpc.ForceCodec(rawCodec{}))}
	if *keepaliveMs > 0 {
		// grpc-go raises Time to its 10 s floor (internal.KeepaliveMinPingTime).
		options = append(options, grpc.WithKeepaliveParams(keepalive.ClientParameters{
			Time:                time.Duration(*keepaliveMs) * time.Millisecond,
			Timeout:             time.Duration(*keepaliveTimeoutMs) * time.Millisecond,
			PermitWithoutStream: true}))
	}
	conn, err := grpc.Dial("passthrough:///crib", options...)
	if err != nil {
		fmt.Fprintln(os.Stderr, "dial:", err)
		os.Exit(2)
	}
	defer conn.Close()

	var outMu sync.Mutex
	encoder := json.NewEncoder(os.Stdout)
	emit := func(r result) {
		r.Dials = atomic.LoadInt64(&dials)
		outMu.Lock()
		defer outMu.Unlock()
		encoder.Encode(r)
	}
	var cancelsMu sync.Mutex
	cancels := map[string]context.CancelFunc{}
	var wg sync.WaitGroup

	input := bufio.NewScanner(os.Stdin)
	input.Buffer(make([]byte, 1<<20), 64<<20)
	for input.Scan() {
		var req request
		if err := json.Unmarshal(input.Bytes(), &req); err != nil {
			emit(result{Error: "bad request line: " + err.Error()})
			continue
		}
		if req.Stats {
			mu.Lock()
			snapshot := map[string]int64{}
			for k, v := range counts {
				snapshot[k] = v
			}
			mu.Unlock()
			emit(result{ID: req.ID, Frames: snapshot})
			continue
		}
		if req.Cancel != "" {
			cancelsMu.Lock()
			cancel := cancels[req.Cancel]
			cancelsMu.Unlock()
			if cancel != nil {
				cancel()
			}
			emit(result{ID: req.ID})
			continue
		}
		ctx, cancel := context.WithCancel(context.Background())
		if req.TimeoutMs > 0 {
			ctx, cancel = context.WithTimeout(context.Background(),
				time.Duration(req.TimeoutMs)*time.Millisecond)
		}
		cancelsMu.Lock()
		cancels[req.ID] = cancel
		cancelsMu.Unlock()
		wg.Add(1)
		go func(req request, ctx context.Context, cancel context.CancelFunc) {
			defer wg.Done()
			defer cancel()
			emit(call(ctx, conn, req, cancel))
		}(req, ctx, cancel)
	}
	wg.Wait()
}

func call(ctx context.Context, conn *grpc.ClientConn, req request,
	cancel context.CancelFunc) result {
	r := result{ID: req.ID}
	body, err := hex.DecodeString(req.Request)
	if err != nil {
		r.Error = "bad hex: " + err.Error()
		return r
	}
	start := time.Now()
	options := []grpc.CallOption{grpc.WaitForReady(req.WaitForReady)}
	if !req.Stream {
		answer := &raw{}
		err = conn.Invoke(ctx, req.Method, &raw{body}, answer, options...)
		if err == nil {
			r.Response = hex.EncodeToString(answer.b)
		}
	} else {
		var stream grpc.ClientStream
		stream, err = conn.NewStream(ctx, &grpc.StreamDesc{ServerStreams: true}, req.Method,
			options...)
		if err == nil {
			err = stream.SendMsg(&raw{body})
		}
		if err == nil {
			err = stream.CloseSend()
		}
		if err == nil && req.HoldMs > 0 {
			// Not reading: grpc-go gives no stream credit back, so the server's answer
			// stops at the stream's window until we read (or the deadline resets it).
			time.Sleep(time.Duration(req.HoldMs) * time.Millisecond)
		}
		for err == nil {
			message := &raw{}
			if err = stream.RecvMsg(message); err != nil {
				break
			}
			if req.MaxMessages > 0 && len(r.Messages) >= req.MaxMessages {
				continue // already cancelled: what was buffered before is dropped
			}
			r.Messages = append(r.Messages, hex.EncodeToString(message.b))
			if req.MaxMessages > 0 && len(r.Messages) >= req.MaxMessages {
				cancel() // mid-stream: the server must drop the call, not the connection
			}
		}
		if err == io.EOF { // the server ended the stream with OK
			err = nil
		}
	}
	r.ElapsedMs = float64(time.Since(start).Microseconds()) / 1000
	st := status.Convert(err)
	r.Code, r.CodeName, r.Message = int(st.Code()), st.Code().String(), st.Message()
	return r
}
