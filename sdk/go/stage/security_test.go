package stage_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"log/slog"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/flight"
	"github.com/apache/arrow-go/v18/arrow/memory"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	"github.com/sluice-etl/sluice/sdk/go/stage"
	"github.com/sluice-etl/sluice/sdk/go/stage/stagetest"
)

// pki is a test PKI in a temporary folder: a CA, a server certificate for
// localhost and 127.0.0.1 and a client certificate signed by it, and an
// unrelated CA with a client certificate of its own.
type pki struct {
	caFile, serverCert, serverKey string // PEM files
	ca, otherCA                   *x509.CertPool
	client, otherClient           tls.Certificate
}

type issuer struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
}

var serial int64

func newKey(t *testing.T) *ecdsa.PrivateKey {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return key
}

// issue signs tmpl with parent (itself when parent is nil) and returns the
// certificate, its key and both as PEM.
func issue(t *testing.T, tmpl *x509.Certificate, parent *issuer) (issuer, []byte, []byte) {
	t.Helper()
	serial++
	tmpl.SerialNumber = big.NewInt(serial)
	tmpl.NotBefore, tmpl.NotAfter = time.Now().Add(-time.Hour), time.Now().Add(time.Hour)
	key := newKey(t)
	signer := issuer{cert: tmpl, key: key}
	if parent != nil {
		signer = *parent
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, signer.cert, &key.PublicKey, signer.key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return issuer{cert: cert, key: key},
		pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER})
}

func caTemplate(name string) *x509.Certificate {
	return &x509.Certificate{
		Subject: pkix.Name{CommonName: name}, IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
}

func clientTemplate(name string) *x509.Certificate {
	return &x509.Certificate{
		Subject: pkix.Name{CommonName: name}, KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
}

func newPKI(t *testing.T) *pki {
	t.Helper()
	dir := t.TempDir()
	write := func(name string, b []byte) string {
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, b, 0o600); err != nil {
			t.Fatal(err)
		}
		return path
	}
	pair := func(certPEM, keyPEM []byte) tls.Certificate {
		c, err := tls.X509KeyPair(certPEM, keyPEM)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	p := &pki{ca: x509.NewCertPool(), otherCA: x509.NewCertPool()}

	ca, caPEM, _ := issue(t, caTemplate("sluice test CA"), nil)
	p.caFile = write("ca.pem", caPEM)
	p.ca.AddCert(ca.cert)
	_, certPEM, keyPEM := issue(t, &x509.Certificate{
		Subject: pkix.Name{CommonName: "localhost"}, DNSNames: []string{"localhost"},
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}, &ca)
	p.serverCert, p.serverKey = write("server.pem", certPEM), write("server.key", keyPEM)
	_, certPEM, keyPEM = issue(t, clientTemplate("engine"), &ca)
	p.client = pair(certPEM, keyPEM)

	other, _, _ := issue(t, caTemplate("another CA"), nil)
	p.otherCA.AddCert(other.cert)
	_, certPEM, keyPEM = issue(t, clientTemplate("intruder"), &other)
	p.otherClient = pair(certPEM, keyPEM)
	return p
}

// tlsClient dials addr over TLS trusting roots, presenting certs.
func tlsClient(t *testing.T, addr string, roots *x509.CertPool, certs []tls.Certificate, opts ...grpc.DialOption) *stagetest.Server {
	t.Helper()
	creds := credentials.NewTLS(&tls.Config{RootCAs: roots, Certificates: certs, MinVersion: tls.VersionTLS12})
	return stagetest.ConnectWith(t, addr, memory.DefaultAllocator, append([]grpc.DialOption{grpc.WithTransportCredentials(creds)}, opts...)...)
}

func tcpListener(t *testing.T) net.Listener {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return lis
}

func randomToken(t *testing.T, prefix string) string {
	t.Helper()
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return prefix + hex.EncodeToString(b)
}

func describeErr(t *testing.T, srv *stagetest.Server) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	_, _, err := srv.Describe(ctx)
	return err
}

// stopServe cancels a Serve and waits for it to return nil.
func stopServe(t *testing.T, cancel context.CancelFunc, done <-chan error) {
	t.Helper()
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Serve: %v", err)
	}
}

func TestMutualTLSAndToken(t *testing.T) {
	p := newPKI(t)
	token, wrong := randomToken(t, "right-"), randomToken(t, "wrong-")
	var logged lockedBuffer
	logger := slog.New(slog.NewTextHandler(&logged, &slog.HandlerOptions{Level: slog.LevelDebug}))

	lis := tcpListener(t)
	addr := lis.Addr().String()
	ctx, cancel := context.WithCancel(t.Context())
	acks := processing("secure", func(context.Context, arrow.RecordBatch) (arrow.RecordBatch, []stage.RowError, error) {
		return nil, nil, nil
	})
	done := serve(t, ctx, acks, stage.WithListener(lis),
		stage.WithTLS(p.serverCert, p.serverKey, p.caFile), stage.WithToken(token), stage.WithLogger(logger))

	good := tlsClient(t, addr, p.ca, []tls.Certificate{p.client}, stagetest.BearerToken(token))
	var errs []error
	t.Run("right CA, client certificate and token", func(t *testing.T) {
		eventually(t, "describe over TLS", func() bool { return describeErr(t, good) == nil })
		// a streaming call too: the whole exchange
		mem := memory.NewCheckedAllocator(memory.DefaultAllocator)
		defer mem.AssertSize(t, 0)
		srv := stagetest.ConnectWith(t, addr, mem, grpc.WithTransportCredentials(credentials.NewTLS(
			&tls.Config{RootCAs: p.ca, Certificates: []tls.Certificate{p.client}})), stagetest.BearerToken(token))
		in := peopleBatch(mem, 0, 3)
		defer in.Release()
		events, err := srv.Run(t.Context(), stagetest.OpenCmd("secure", 1, 0, ""), people, in)
		defer stagetest.Release(events)
		if err != nil || stagetest.Kinds(events) != "ack(0) flushed" {
			t.Fatalf("exchange: %s, %v", stagetest.Kinds(events), err)
		}
	})
	t.Run("a client trusting another CA", func(t *testing.T) {
		err := describeErr(t, tlsClient(t, addr, p.otherCA, []tls.Certificate{p.client}, stagetest.BearerToken(token)))
		if status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), "certificate signed by unknown authority") {
			t.Fatalf("describe: %v", err)
		}
		errs = append(errs, err)
	})
	// TLS 1.2 for the client certificates: with 1.3 the client ends its
	// handshake before the server checks its certificate, and may see a
	// broken connection rather than the server's alert.
	t.Run("a client without a certificate", func(t *testing.T) {
		creds := credentials.NewTLS(&tls.Config{RootCAs: p.ca, MaxVersion: tls.VersionTLS12})
		err := describeErr(t, stagetest.ConnectWith(t, addr, memory.DefaultAllocator, grpc.WithTransportCredentials(creds), stagetest.BearerToken(token)))
		if status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), "authentication handshake failed: remote error: tls: handshake failure") {
			t.Fatalf("describe: %v", err)
		}
		errs = append(errs, err)
	})
	t.Run("a client certificate of another CA", func(t *testing.T) {
		// sent whatever CAs the server asks for (Go's client would rather
		// send none)
		creds := credentials.NewTLS(&tls.Config{RootCAs: p.ca, MaxVersion: tls.VersionTLS12,
			GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &p.otherClient, nil }})
		err := describeErr(t, stagetest.ConnectWith(t, addr, memory.DefaultAllocator, grpc.WithTransportCredentials(creds), stagetest.BearerToken(token)))
		if status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), "remote error: tls: unknown certificate authority") {
			t.Fatalf("describe: %v", err)
		}
		errs = append(errs, err)
	})
	t.Run("a plaintext client", func(t *testing.T) {
		err := describeErr(t, stagetest.ConnectWith(t, addr, memory.DefaultAllocator, stagetest.BearerToken(token)))
		if status.Code(err) != codes.Unavailable {
			t.Fatalf("describe: %v", err)
		}
	})
	t.Run("no token", func(t *testing.T) {
		noToken := tlsClient(t, addr, p.ca, []tls.Certificate{p.client})
		err := describeErr(t, noToken)
		wantStatus(t, err, codes.Unauthenticated, `no token: this stage requires "authorization: Bearer <token>" (the pipeline's token)`)
		errs = append(errs, err)
		// streaming calls and calls the stage does not implement are refused alike
		x, err := noToken.Client.DoExchange(t.Context())
		if err == nil {
			_, err = x.Recv()
		}
		wantStatus(t, err, codes.Unauthenticated, `no token: this stage requires "authorization: Bearer <token>" (the pipeline's token)`)
		la, err := noToken.Client.ListActions(t.Context(), &flight.Empty{})
		if err == nil {
			_, err = la.Recv()
		}
		wantStatus(t, err, codes.Unauthenticated, `no token: this stage requires "authorization: Bearer <token>" (the pipeline's token)`)
		hs, err := noToken.Client.Handshake(t.Context())
		if err == nil {
			_, err = hs.Recv()
		}
		wantStatus(t, err, codes.Unauthenticated, `no token: this stage requires "authorization: Bearer <token>" (the pipeline's token)`)
		// another scheme is no bearer token
		basic := tlsClient(t, addr, p.ca, []tls.Certificate{p.client}, grpc.WithPerRPCCredentials(basicAuth(token)))
		wantStatus(t, describeErr(t, basic), codes.Unauthenticated, `no token: this stage requires "authorization: Bearer <token>" (the pipeline's token)`)
	})
	t.Run("wrong token", func(t *testing.T) {
		bad := tlsClient(t, addr, p.ca, []tls.Certificate{p.client}, stagetest.BearerToken(wrong))
		err := describeErr(t, bad)
		wantStatus(t, err, codes.Unauthenticated, "wrong token")
		errs = append(errs, err)
		// a prefix of the token is wrong too
		prefix := tlsClient(t, addr, p.ca, []tls.Certificate{p.client}, stagetest.BearerToken(token[:len(token)-1]))
		wantStatus(t, describeErr(t, prefix), codes.Unauthenticated, "wrong token")
		x, err := bad.Client.DoExchange(t.Context())
		if err == nil {
			_, err = x.Recv()
		}
		wantStatus(t, err, codes.Unauthenticated, "wrong token")
		errs = append(errs, err)
	})

	// The tokens are secrets: in no error and no log line.
	stopServe(t, cancel, done) // every line is written
	logs := strings.Join(logged.lines(), "\n")
	if !strings.Contains(logs, "refused an RPC") || !strings.Contains(logs, "wrong token") || !strings.Contains(logs, "token=true") {
		t.Fatalf("the refused calls are not logged:\n%s", logs)
	}
	for _, secret := range []string{token, wrong, token[:len(token)-1], strings.TrimPrefix(token, "right-")} {
		if strings.Contains(logs, secret) {
			t.Errorf("a token is in the log:\n%s", logs)
		}
		for _, err := range errs {
			if strings.Contains(err.Error(), secret) {
				t.Errorf("a token is in the error %v", err)
			}
		}
	}
}

type basicAuth string

func (b basicAuth) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Basic " + string(b)}, nil
}
func (basicAuth) RequireTransportSecurity() bool { return false }

// The environment is the default: what the engine's operator sets.
func TestTLSAndTokenFromTheEnvironment(t *testing.T) {
	p := newPKI(t)
	token := randomToken(t, "env-")
	lis := tcpListener(t)
	addr := lis.Addr().String()
	lis.Close()
	t.Setenv(stage.EnvSocket, "")
	t.Setenv(stage.EnvAddr, addr)
	t.Setenv(stage.EnvTLSCert, p.serverCert)
	t.Setenv(stage.EnvTLSKey, p.serverKey)
	t.Setenv(stage.EnvTLSClientCA, "")
	t.Setenv(stage.EnvToken, token)
	ctx, cancel := context.WithCancel(t.Context())
	done := serve(t, ctx, processing("env", nil))
	defer stopServe(t, cancel, done)

	// no client certificate needed without SLUICE_STAGE_TLS_CLIENT_CA
	good := tlsClient(t, addr, p.ca, nil, stagetest.BearerToken(token))
	eventually(t, "describe over TLS", func() bool { return describeErr(t, good) == nil })
	wantStatus(t, describeErr(t, tlsClient(t, addr, p.ca, nil)), codes.Unauthenticated,
		`no token: this stage requires "authorization: Bearer <token>" (the pipeline's token)`)
	if err := describeErr(t, tlsClient(t, addr, p.otherCA, nil, stagetest.BearerToken(token))); status.Code(err) != codes.Unavailable {
		t.Fatalf("a client trusting another CA: %v", err)
	}
}

// The options override the environment: WithToken("") and WithTLS("", "",
// "") turn both off.
func TestOptionsOverrideTheEnvironment(t *testing.T) {
	t.Setenv(stage.EnvToken, "from-the-environment")
	t.Setenv(stage.EnvTLSCert, "/nonexistent/cert.pem")
	t.Setenv(stage.EnvTLSKey, "/nonexistent/key.pem")
	if _, err := stage.NewServer(processing("s", nil)); err == nil || !strings.Contains(err.Error(), "/nonexistent/cert.pem") {
		t.Fatalf("NewServer reads the environment: %v", err)
	}
	srv, _ := start(t, processing("s", nil)) // stagetest.Start: WithTLS("", "", ""), WithToken("")
	if err := describeErr(t, srv); err != nil {
		t.Fatal(err)
	}
}

// A child stage on a unix socket may require a token too.
func TestTokenOnAUnixSocket(t *testing.T) {
	token := randomToken(t, "unix-")
	sock := filepath.Join(t.TempDir(), "s.sock")
	lis, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := serve(t, ctx, processing("s", nil), stage.WithListener(lis), stage.WithTLS("", "", ""), stage.WithToken(token))
	defer stopServe(t, cancel, done)
	good := stagetest.ConnectWith(t, "unix://"+sock, memory.DefaultAllocator, stagetest.BearerToken(token))
	eventually(t, "describe", func() bool { return describeErr(t, good) == nil })
	if _, err := good.Action(t.Context(), stage.ActionHealth); err != nil {
		t.Fatal(err)
	}
	_, err = stagetest.Connect(t, sock, memory.DefaultAllocator).Action(t.Context(), stage.ActionHealth)
	wantStatus(t, err, codes.Unauthenticated, `no token: this stage requires "authorization: Bearer <token>" (the pipeline's token)`)
}

func TestTLSSettingsThatAreIncomplete(t *testing.T) {
	p := newPKI(t)
	notPEM := filepath.Join(t.TempDir(), "not.pem")
	if err := os.WriteFile(notPEM, []byte("not a certificate"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name          string
		cert, key, ca string
		want          string
	}{
		{"cert without key", p.serverCert, "", "", "SLUICE_STAGE_TLS_CERT is set but SLUICE_STAGE_TLS_KEY is not"},
		{"key without cert", "", p.serverKey, "", "SLUICE_STAGE_TLS_KEY is set but SLUICE_STAGE_TLS_CERT is not"},
		{"client CA without cert", "", "", p.caFile, "SLUICE_STAGE_TLS_CLIENT_CA is set but SLUICE_STAGE_TLS_CERT and SLUICE_STAGE_TLS_KEY are not"},
		{"key of another cert", p.serverCert, p.caFile, "", "SLUICE_STAGE_TLS_KEY"},
		{"missing cert file", filepath.Join(t.TempDir(), "gone.pem"), p.serverKey, "", "gone.pem"},
		{"client CA not PEM", p.serverCert, p.serverKey, notPEM, "no PEM certificate"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sock := filepath.Join(t.TempDir(), "s.sock")
			t.Setenv(stage.EnvSocket, sock)
			t.Setenv(stage.EnvTLSCert, tc.cert)
			t.Setenv(stage.EnvTLSKey, tc.key)
			t.Setenv(stage.EnvTLSClientCA, tc.ca)
			err := stage.Serve(t.Context(), processing("s", nil), quiet)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Serve: %v, want an error with %q", err, tc.want)
			}
			if _, err := os.Stat(sock); err == nil {
				t.Fatal("Serve listened before it failed")
			}
		})
	}
	_, err := stage.NewServer(processing("s", nil), stage.WithTLS(p.serverCert, "", ""))
	if err == nil || !strings.Contains(err.Error(), "WithTLS certFile is set but WithTLS keyFile is not") {
		t.Fatalf("NewServer: %v", err)
	}
}

func TestRegisterRefusesTLSAndTokenOptions(t *testing.T) {
	for _, opt := range []stage.Option{stage.WithToken("t"), stage.WithTLS("", "", "")} {
		if err := stage.Register(grpc.NewServer(), processing("s", nil), opt); err == nil {
			t.Fatal("Register accepted a TLS or token option")
		}
	}
	t.Setenv(stage.EnvToken, "ignored by Register")
	if err := stage.Register(grpc.NewServer(), processing("s", nil)); err != nil {
		t.Fatal(err)
	}
}
