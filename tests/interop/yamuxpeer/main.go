// Command yamuxpeer is the reference peer of the interop tests: hashicorp/yamux on one end of
// a TCP connection, the project's Python yamux session on the other.
//
//	yamuxpeer -mode client -addr HOST:PORT -streams N -bytes N [options]
//	    Opens N streams, writes a deterministic pattern of -bytes on each, closes the write
//	    side (FIN), reads the echo back and checks it byte for byte; pings the peer.
//	yamuxpeer -mode server [-dial] -addr 127.0.0.1:0 [options]
//	    Prints {"listen": "HOST:PORT"}, accepts one connection and echoes every stream until
//	    EOF, then closes the stream; exits once the session ends.
//
// Either way the last line on stdout is one JSON object describing the run, and the exit code
// is 0 only if everything checked out. Every wait is bounded by -deadline.
//
// The pattern of a stream labelled L (the client uses the stream id) is the concatenation of
// sha256("L:0"), sha256("L:1"), ... cut to length, so both languages build it the same way and
// a misplaced or repeated chunk changes the digest.
package main

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/yamux"
)

type options struct {
	mode          string
	addr          string
	streams       int
	size          int
	window        uint
	keepalive     time.Duration
	writeTimeout  time.Duration
	readDelay     time.Duration
	goawayAfter   int
	closeWhenDone bool
	expectGoaway  bool
	idle          time.Duration
	deadline      time.Duration
	dial          bool
}

func parseOptions() options {
	var o options
	flag.StringVar(&o.mode, "mode", "client", "client (dial -addr) or server (listen on -addr)")
	flag.StringVar(&o.addr, "addr", "127.0.0.1:0", "address to dial or listen on")
	flag.IntVar(&o.streams, "streams", 8, "client: streams to open")
	flag.IntVar(&o.size, "bytes", 1<<20, "client: bytes to send (and expect back) per stream")
	flag.UintVar(&o.window, "window", 0, "MaxStreamWindowSize in bytes (0: the library's 256 KiB)")
	flag.DurationVar(&o.keepalive, "keepalive", 0, "keepalive ping interval (0: keepalive off)")
	flag.DurationVar(&o.writeTimeout, "write-timeout", 0, "ConnectionWriteTimeout, which also bounds a ping (0: default)")
	flag.DurationVar(&o.readDelay, "read-delay", 0, "sleep this long before reading each stream")
	flag.IntVar(&o.goawayAfter, "goaway-after", 0, "server: send Go Away after accepting this many streams")
	flag.BoolVar(&o.closeWhenDone, "close-when-done", false, "server: close the session once the streams accepted before Go Away are done")
	flag.BoolVar(&o.expectGoaway, "expect-goaway", false, "client: once the last stream's echo starts, try to open one more stream")
	flag.DurationVar(&o.idle, "idle", 0, "client: stay idle this long after the transfers, then ping again")
	flag.DurationVar(&o.deadline, "deadline", 30*time.Second, "bound on the whole run")
	flag.BoolVar(&o.dial, "dial", false, "server: dial -addr instead of listening (reverse mode)")
	flag.Parse()
	return o
}

func config(o options) *yamux.Config {
	cfg := yamux.DefaultConfig()
	cfg.EnableKeepAlive = o.keepalive > 0
	if o.keepalive > 0 {
		cfg.KeepAliveInterval = o.keepalive
	}
	if o.writeTimeout > 0 {
		cfg.ConnectionWriteTimeout = o.writeTimeout
	}
	if o.window > 0 {
		cfg.MaxStreamWindowSize = uint32(o.window)
	}
	return cfg
}

func pattern(label uint32, n int) []byte {
	out := make([]byte, 0, n+sha256.Size)
	for j := 0; len(out) < n; j++ {
		sum := sha256.Sum256([]byte(fmt.Sprintf("%d:%d", label, j)))
		out = append(out, sum[:]...)
	}
	return out[:n]
}

func digest(data []byte) string {
	sum := sha256.Sum256(data)
	return hex.EncodeToString(sum[:])
}

func emit(result interface{}) {
	line, err := json.Marshal(result)
	if err != nil {
		fmt.Fprintf(os.Stderr, "yamuxpeer: %v\n", err)
		os.Exit(2)
	}
	fmt.Println(string(line))
}

func main() {
	o := parseOptions()
	var ok bool
	switch o.mode {
	case "client":
		ok = runClient(o)
	case "server":
		ok = runServer(o)
	default:
		fmt.Fprintf(os.Stderr, "yamuxpeer: unknown -mode %q\n", o.mode)
		os.Exit(2)
	}
	if !ok {
		os.Exit(1)
	}
}

// ----------------------------------------------------------------------------- client

type clientStream struct {
	ID             uint32 `json:"id"`
	Sent           int    `json:"sent"`
	Received       int    `json:"received"`
	SentSHA256     string `json:"sent_sha256"`
	ReceivedSHA256 string `json:"received_sha256"`
	Match          bool   `json:"match"`
	Error          string `json:"error,omitempty"`
}

type clientResult struct {
	Mode                string         `json:"mode"`
	OK                  bool           `json:"ok"`
	Error               string         `json:"error,omitempty"`
	Streams             []clientStream `json:"streams"`
	PingRTTMicros       int64          `json:"ping_rtt_us"`
	PingError           string         `json:"ping_error,omitempty"`
	GoAwayError         string         `json:"goaway_error,omitempty"`
	GoAwayIsRemote      bool           `json:"goaway_is_err_remote_go_away"`
	StreamsDoneAtGoAway int            `json:"streams_done_at_goaway"`
	PeerClosedAll       bool           `json:"peer_closed_all"`
	AliveAfterIdle      bool           `json:"alive_after_idle"`
	IdlePingRTTMicros   int64          `json:"idle_ping_rtt_us"`
	ElapsedMillis       int64          `json:"elapsed_ms"`
}

// readExactly reads want bytes from st, or fails at deadline.
//
// The yamux snapshot Debian packages (2019) has Read report io.EOF whenever our own side has
// closed and the receive buffer is momentarily empty, although the peer may still be sending;
// later releases fixed that. So an EOF before want bytes means "nothing yet", and is retried.
func readExactly(st *yamux.Stream, want int, deadline time.Time, first chan<- struct{}) ([]byte, error) {
	got := make([]byte, 0, want)
	chunk := make([]byte, 64*1024)
	for len(got) < want {
		if time.Now().After(deadline) {
			return got, fmt.Errorf("timed out after %d of %d bytes", len(got), want)
		}
		room := want - len(got)
		if room > len(chunk) {
			room = len(chunk)
		}
		st.SetReadDeadline(deadline)
		n, err := st.Read(chunk[:room])
		if n > 0 && len(got) == 0 {
			close(first)
		}
		got = append(got, chunk[:n]...)
		if err == io.EOF {
			if n == 0 {
				time.Sleep(time.Millisecond)
			}
			continue
		}
		if err != nil {
			return got, err
		}
	}
	// The peer must send nothing more. (After our FIN an empty buffer reads as EOF.)
	if n, _ := st.Read(chunk[:1]); n > 0 {
		return got, fmt.Errorf("more than the %d bytes sent came back", want)
	}
	return got, nil
}

func runClient(o options) bool {
	start := time.Now()
	deadline := start.Add(o.deadline)
	result := clientResult{Mode: "client"}
	fail := func(err error) bool {
		result.Error = err.Error()
		emit(result)
		return false
	}
	conn, err := net.DialTimeout("tcp", o.addr, 5*time.Second)
	if err != nil {
		return fail(err)
	}
	sess, err := yamux.Client(conn, config(o))
	if err != nil {
		return fail(err)
	}
	defer sess.Close()
	guard := time.AfterFunc(o.deadline, func() { sess.Close() })
	defer guard.Stop()

	result.Streams = make([]clientStream, o.streams)
	firsts := make([]chan struct{}, o.streams)
	var done int32
	var wg sync.WaitGroup
	for i := 0; i < o.streams; i++ {
		st, err := sess.OpenStream()
		if err != nil {
			return fail(fmt.Errorf("opening stream %d of %d: %v", i+1, o.streams, err))
		}
		firsts[i] = make(chan struct{})
		wg.Add(1)
		go func(i int, st *yamux.Stream) {
			defer wg.Done()
			defer atomic.AddInt32(&done, 1)
			result.Streams[i] = clientTransfer(st, o, deadline, firsts[i])
		}(i, st)
	}

	if o.expectGoaway && o.streams > 0 {
		// The peer sends its Go Away before any echo on the last stream, and frames are
		// handled in order, so by now the Go Away has been seen.
		select {
		case <-firsts[o.streams-1]:
		case <-time.After(time.Until(deadline)):
		}
		result.StreamsDoneAtGoAway = int(atomic.LoadInt32(&done))
		extra, err := sess.OpenStream()
		if err != nil {
			result.GoAwayError = err.Error()
			result.GoAwayIsRemote = err == yamux.ErrRemoteGoAway
		} else {
			result.GoAwayError = fmt.Sprintf("none: stream %d opened", extra.StreamID())
			extra.Close()
		}
	}
	wg.Wait()

	ok := true
	for _, s := range result.Streams {
		ok = ok && s.Match && s.Error == ""
	}
	if rtt, err := sess.Ping(); err != nil {
		result.PingError = err.Error()
		ok = false
	} else {
		result.PingRTTMicros = rtt.Microseconds()
	}
	// A stream leaves the session's table only once both ends sent FIN (or one sent RST).
	for !time.Now().After(deadline) {
		if sess.NumStreams() == 0 {
			result.PeerClosedAll = true
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	ok = ok && result.PeerClosedAll
	if o.idle > 0 {
		time.Sleep(o.idle)
		result.AliveAfterIdle = !sess.IsClosed()
		if rtt, err := sess.Ping(); err != nil {
			result.PingError = "after idle: " + err.Error()
			ok = false
		} else {
			result.IdlePingRTTMicros = rtt.Microseconds()
		}
		ok = ok && result.AliveAfterIdle
	}
	if o.expectGoaway {
		ok = ok && result.GoAwayIsRemote
	}
	result.OK = ok
	result.ElapsedMillis = time.Since(start).Milliseconds()
	emit(result)
	return ok
}

func clientTransfer(st *yamux.Stream, o options, deadline time.Time, first chan struct{}) clientStream {
	id := st.StreamID()
	sent := pattern(id, o.size)
	res := clientStream{ID: id, SentSHA256: digest(sent)}
	writeErr := make(chan error, 1)
	go func() {
		st.SetWriteDeadline(deadline)
		_, err := st.Write(sent)
		if err == nil {
			err = st.Close() // FIN: we send no more, and keep reading
		}
		writeErr <- err
	}()
	if o.readDelay > 0 {
		time.Sleep(o.readDelay)
	}
	got, err := readExactly(st, o.size, deadline, first)
	if werr := <-writeErr; werr != nil && err == nil {
		err = fmt.Errorf("write: %v", werr)
	}
	res.Sent = len(sent)
	res.Received = len(got)
	res.ReceivedSHA256 = digest(got)
	res.Match = bytes.Equal(got, sent)
	if err != nil {
		res.Error = err.Error()
	}
	return res
}

// ----------------------------------------------------------------------------- server

type serverStream struct {
	ID             uint32 `json:"id"`
	Received       int    `json:"received"`
	ReceivedSHA256 string `json:"received_sha256"`
	Error          string `json:"error,omitempty"`
}

type serverResult struct {
	Mode       string         `json:"mode"`
	OK         bool           `json:"ok"`
	Error      string         `json:"error,omitempty"`
	Accepted   int            `json:"accepted"`
	GoAwaySent bool           `json:"goaway_sent"`
	Closed     bool           `json:"closed_by_us"`
	TimedOut   bool           `json:"timed_out"`
	Streams    []serverStream `json:"streams"`
}

func runServer(o options) bool {
	result := serverResult{Mode: "server"}
	fail := func(err error) bool {
		result.Error = err.Error()
		emit(result)
		return false
	}
	var conn net.Conn
	var err error
	if o.dial {
		// The yamux server dials: stream parity follows Server(), not who connected.
		conn, err = net.DialTimeout("tcp", o.addr, o.deadline)
		if err != nil {
			return fail(err)
		}
	} else {
		ln, err := net.Listen("tcp", o.addr)
		if err != nil {
			return fail(err)
		}
		emit(map[string]string{"listen": ln.Addr().String()})
		ln.(*net.TCPListener).SetDeadline(time.Now().Add(o.deadline))
		conn, err = ln.Accept()
		ln.Close()
		if err != nil {
			return fail(err)
		}
	}
	sess, err := yamux.Server(conn, config(o))
	if err != nil {
		return fail(err)
	}
	var timedOut int32
	guard := time.AfterFunc(o.deadline, func() {
		atomic.StoreInt32(&timedOut, 1)
		sess.Close()
	})
	defer guard.Stop()

	var mu sync.Mutex
	var wg sync.WaitGroup
	for {
		st, err := sess.AcceptStream()
		if err != nil {
			break // the session is over
		}
		result.Accepted++
		wg.Add(1)
		if o.goawayAfter > 0 && result.Accepted == o.goawayAfter {
			// Before this stream's echo starts, so the peer sees the Go Away first.
			if err := sess.GoAway(); err != nil {
				result.Error = "GoAway: " + err.Error()
			}
			result.GoAwaySent = true
			if o.closeWhenDone {
				go func() {
					wg.Wait()
					result.Closed = true
					sess.Close()
				}()
			}
		}
		go func(st *yamux.Stream) {
			defer wg.Done()
			res := echo(st, o.readDelay)
			mu.Lock()
			result.Streams = append(result.Streams, res)
			mu.Unlock()
		}(st)
	}
	wg.Wait()
	sort.Slice(result.Streams, func(i, j int) bool { return result.Streams[i].ID < result.Streams[j].ID })
	result.TimedOut = atomic.LoadInt32(&timedOut) == 1
	result.OK = result.Error == "" && !result.TimedOut
	for _, s := range result.Streams {
		result.OK = result.OK && s.Error == ""
	}
	emit(result)
	return result.OK
}

// echo writes back everything it reads until the peer's FIN, then sends its own.
func echo(st *yamux.Stream, delay time.Duration) serverStream {
	res := serverStream{ID: st.StreamID()}
	if delay > 0 {
		time.Sleep(delay)
	}
	hash := sha256.New()
	buf := make([]byte, 32*1024)
	for {
		n, err := st.Read(buf)
		if n > 0 {
			hash.Write(buf[:n])
			res.Received += n
			if _, werr := st.Write(buf[:n]); werr != nil {
				res.Error = "write: " + werr.Error()
				break
			}
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			res.Error = "read: " + err.Error()
			break
		}
	}
	if err := st.Close(); err != nil && res.Error == "" {
		res.Error = "close: " + err.Error()
	}
	res.ReceivedSHA256 = hex.EncodeToString(hash.Sum(nil))
	return res
}
