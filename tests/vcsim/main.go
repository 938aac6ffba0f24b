// Command gpuprov-vcsim serves one of govmomi's vSphere simulator models (vcsim) for gpuprov's
// ESXi tests: Debian ships the simulator library but not the vcsim command.
//
//	gpuprov-vcsim -model esx|vpx -info FILE
//
// It serves API version 7.0.3.0 over HTTPS on 127.0.0.1 (a free port) with a fresh self-signed
// certificate, accepts only the login in $VCSIM_USER / $VCSIM_PASSWORD, installs gpuprov's
// passthrough extension (passthrough_ext.go), then writes FILE as JSON: url, the certificate in
// PEM and its SHA-1/SHA-256 thumbprints. It runs until SIGTERM or SIGINT.
package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"flag"
	"log"
	"math/big"
	"net"
	"net/url"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/simulator/esx"
)

// At the stock 6.5, pyVmomi negotiates a version without Dynamic DirectPath; "7.0" alone makes
// pyVmomi fall back to 6.0 (see the project's testbed notes).
const apiVersion = "7.0.3.0"

// vSphere 7.0 U2 and later create VMs at hardware version 19 (VMware KB 1003746); the stock
// model's vmx-13 predates Dynamic DirectPath (hardware version 17).
const hardwareVersion = "vmx-19"

type info struct {
	URL        string `json:"url"`
	CertPEM    string `json:"cert_pem"`
	SHA1       string `json:"thumbprint_sha1"`
	SHA256     string `json:"thumbprint_sha256"`
	Model      string `json:"model"`
	APIVersion string `json:"api_version"`
}

// selfSigned makes a P-256 certificate for 127.0.0.1: the simulator's built-in one is RSA-1024,
// which Debian's OpenSSL (security level 2) refuses to verify.
func selfSigned() (tls.Certificate, []byte) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		log.Fatal(err)
	}
	template := x509.Certificate{
		SerialNumber:          big.NewInt(time.Now().UnixNano()),
		Subject:               pkix.Name{CommonName: "gpuprov-vcsim"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		IPAddresses:           []net.IP{net.ParseIP("127.0.0.1")},
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, &template, &template, &key.PublicKey, key)
	if err != nil {
		log.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, der
}

func writeInfo(path string, value info) {
	data, err := json.Marshal(value)
	if err != nil {
		log.Fatal(err)
	}
	// Written whole, then renamed: the test polls for the file and must never read half of it.
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		log.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		log.Fatal(err)
	}
}

func main() {
	modelName := flag.String("model", "esx", "esx (a standalone host) or vpx (a vCenter)")
	infoPath := flag.String("info", "", "write url, certificate and thumbprints here (JSON)")
	flag.Parse()
	if *infoPath == "" {
		log.Fatal("-info FILE is required")
	}
	user, password := os.Getenv("VCSIM_USER"), os.Getenv("VCSIM_PASSWORD")
	if user == "" || password == "" {
		log.Fatal("VCSIM_USER and VCSIM_PASSWORD must be set")
	}

	esx.HardwareVersion = hardwareVersion
	var model *simulator.Model
	switch *modelName {
	case "esx":
		model = simulator.ESX()
	case "vpx":
		model = simulator.VPX()
	default:
		log.Fatalf("unknown model %q", *modelName)
	}
	model.ServiceContent.About.ApiVersion = apiVersion
	defer model.Remove()
	if err := model.Create(); err != nil {
		log.Fatal(err)
	}
	installPassthroughExtension()

	cert, der := selfSigned()
	model.Service.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
	model.Service.Listen = &url.URL{Host: "127.0.0.1:0", User: url.UserPassword(user, password)}
	server := model.Service.NewServer()
	defer server.Close()
	interceptMethods(model.Service, server.URL.Hostname())

	sha1sum, sha256sum := sha1.Sum(der), sha256.Sum256(der)
	public := *server.URL
	public.User = nil
	writeInfo(*infoPath, info{
		URL:        public.String(),
		CertPEM:    string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})),
		SHA1:       hex.EncodeToString(sha1sum[:]),
		SHA256:     hex.EncodeToString(sha256sum[:]),
		Model:      *modelName,
		APIVersion: apiVersion,
	})

	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	<-stop
}
