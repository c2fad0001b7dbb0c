package stage

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
)

// The environment variables of a remote stage's security, read by Serve and
// NewServer when WithTLS and WithToken are not given.
const (
	// EnvTLSCert and EnvTLSKey are PEM files: the stage's certificate
	// (chain) and its private key. With both the stage serves TLS; one
	// without the other is an error.
	EnvTLSCert = "SLUICE_STAGE_TLS_CERT"
	EnvTLSKey  = "SLUICE_STAGE_TLS_KEY"
	// EnvTLSClientCA is a PEM file of CA certificates: when set, a client
	// must present a certificate signed by one of them (mutual TLS). It
	// needs EnvTLSCert and EnvTLSKey.
	EnvTLSClientCA = "SLUICE_STAGE_TLS_CLIENT_CA"
	// EnvToken is a shared secret: when set (non-empty), every RPC must
	// carry the gRPC metadata "authorization: Bearer <token>".
	EnvToken = "SLUICE_STAGE_TOKEN"
)

// The gRPC UNAUTHENTICATED messages of a stage that requires a token.
const (
	msgNoToken    = `no token: this stage requires "authorization: Bearer <token>" (the pipeline's token)`
	msgWrongToken = "wrong token"
)

// WithTLS makes the stage serve TLS with the certificate and key in the PEM
// files certFile and keyFile. clientCAFile, when not empty, is a PEM file
// of CA certificates: clients must then present a certificate signed by
// one of them (mutual TLS, tls.RequireAndVerifyClientCert).
//
// It overrides SLUICE_STAGE_TLS_CERT, SLUICE_STAGE_TLS_KEY and
// SLUICE_STAGE_TLS_CLIENT_CA, which Serve and NewServer read otherwise;
// WithTLS("", "", "") serves plaintext whatever the environment says. The
// files are read when the server is built.
func WithTLS(certFile, keyFile, clientCAFile string) Option {
	return func(c *config) {
		c.tls = &tlsFiles{cert: certFile, key: keyFile, clientCA: clientCAFile, from: "WithTLS"}
	}
}

// WithToken makes every RPC of the stage (unary and streaming) require the
// gRPC metadata "authorization: Bearer <token>"; one without it, or with
// another token, fails with gRPC UNAUTHENTICATED. The token is compared in
// constant time and never logged.
//
// It overrides SLUICE_STAGE_TOKEN, which Serve and NewServer read
// otherwise; WithToken("") requires no token whatever the environment says.
// Send a token only over TLS or a unix socket: it is a password.
func WithToken(token string) Option {
	return func(c *config) { c.token = &token }
}

type tlsFiles struct {
	cert, key, clientCA string
	from                string // "WithTLS", or "" for the environment
}

// names returns how the files are named in errors: the option's arguments
// or the environment variables.
func (f tlsFiles) names() (cert, key, clientCA string) {
	if f.from != "" {
		return f.from + " certFile", f.from + " keyFile", f.from + " clientCAFile"
	}
	return EnvTLSCert, EnvTLSKey, EnvTLSClientCA
}

// security is what a stage's server needs to authenticate: TLS credentials
// (nil: plaintext) and the hash of the token (nil: no token).
type security struct {
	creds      credentials.TransportCredentials
	clientAuth bool      // clients must present a certificate
	tokenHash  *[32]byte // SHA-256 of the token
}

// securityOf reads the TLS files and the token of cfg, or of the
// environment where cfg has none.
func securityOf(cfg config) (security, error) {
	var sec security
	files := cfg.tls
	if files == nil {
		files = &tlsFiles{cert: os.Getenv(EnvTLSCert), key: os.Getenv(EnvTLSKey), clientCA: os.Getenv(EnvTLSClientCA)}
	}
	certName, keyName, caName := files.names()
	switch {
	case files.cert == "" && files.key == "" && files.clientCA != "":
		return sec, fmt.Errorf("stage: %s is set but %s and %s are not: client certificates need TLS", caName, certName, keyName)
	case files.cert != "" && files.key == "":
		return sec, fmt.Errorf("stage: %s is set but %s is not: TLS needs both a certificate and its key", certName, keyName)
	case files.cert == "" && files.key != "":
		return sec, fmt.Errorf("stage: %s is set but %s is not: TLS needs both a certificate and its key", keyName, certName)
	case files.cert != "":
		cert, err := tls.LoadX509KeyPair(files.cert, files.key)
		if err != nil {
			return sec, fmt.Errorf("stage: TLS certificate %s (%s) and key %s (%s): %w", files.cert, certName, files.key, keyName, err)
		}
		conf := &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
		if files.clientCA != "" {
			pem, err := os.ReadFile(files.clientCA)
			if err != nil {
				return sec, fmt.Errorf("stage: client CA (%s): %w", caName, err)
			}
			pool := x509.NewCertPool()
			if !pool.AppendCertsFromPEM(pem) {
				return sec, fmt.Errorf("stage: client CA %s (%s): no PEM certificate in it", files.clientCA, caName)
			}
			conf.ClientCAs, conf.ClientAuth = pool, tls.RequireAndVerifyClientCert
			sec.clientAuth = true
		}
		sec.creds = credentials.NewTLS(conf)
	}

	token := os.Getenv(EnvToken)
	if cfg.token != nil {
		token = *cfg.token
	}
	if token != "" {
		h := sha256.Sum256([]byte(token))
		sec.tokenHash = &h
	}
	return sec, nil
}

// serverOptions are the gRPC options that enforce sec.
func (sec security) serverOptions(log *slog.Logger) []grpc.ServerOption {
	var opts []grpc.ServerOption
	if sec.creds != nil {
		opts = append(opts, grpc.Creds(sec.creds))
	}
	if sec.tokenHash != nil {
		check := func(ctx context.Context, method string) error {
			err := checkToken(ctx, sec.tokenHash)
			if err != nil {
				addr := "unknown"
				if p, ok := peer.FromContext(ctx); ok && p.Addr != nil {
					addr = p.Addr.String()
				}
				// the message says why; never what was sent
				log.Warn("sluice stage: refused an RPC", "method", method, "peer", addr, "error", status.Convert(err).Message())
			}
			return err
		}
		opts = append(opts,
			grpc.ChainUnaryInterceptor(func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
				if err := check(ctx, info.FullMethod); err != nil {
					return nil, err
				}
				return handler(ctx, req)
			}),
			grpc.ChainStreamInterceptor(func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
				if err := check(ss.Context(), info.FullMethod); err != nil {
					return err
				}
				return handler(srv, ss)
			}))
	}
	return opts
}

// checkToken checks the "authorization: Bearer <token>" metadata of an
// incoming call against the hash of the token. Hashing first makes the
// comparison constant-time in the length of the token too.
func checkToken(ctx context.Context, want *[32]byte) error {
	md, _ := metadata.FromIncomingContext(ctx)
	bearer := false
	for _, v := range md.Get("authorization") {
		scheme, tok, ok := strings.Cut(v, " ")
		if !ok || !strings.EqualFold(scheme, "Bearer") {
			continue
		}
		bearer = true
		got := sha256.Sum256([]byte(tok))
		if subtle.ConstantTimeCompare(got[:], want[:]) == 1 {
			return nil
		}
	}
	if !bearer {
		return status.Error(codes.Unauthenticated, msgNoToken)
	}
	return status.Error(codes.Unauthenticated, msgWrongToken)
}

var errSecurityInRegister = errors.New("stage: Register: WithTLS and WithToken configure the server that Serve and NewServer build; " +
	"a program that registers the stage on its own gRPC server sets its credentials and authentication there")
