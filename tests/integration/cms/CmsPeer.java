// BouncyCastle as an independent CMS peer for tests/integration/cms/test_bouncycastle.py.
// Compiled by the test with javac against Debian's bcprov/bcpkix/bcutil; never vendored.
//
//   encrypt gcm|cbc oaep|v15 IN OUT CERT...    one RecipientInfo per certificate:
//                                              RSA -> ktri, EC/X25519/X448 -> kari (ECDH)
//   decrypt IN CERT KEY OUT [CERT KEY OUT]...  open an (Auth)EnvelopedData for each device
//   sign rsa|pss|ecdsa|ed25519 detached|attached IN OUT CERT KEY
//   verify SIG CONTENT|- CERT [SIG CONTENT|- CERT]...
//                                              prints "verified N" per triple (N signers
//                                              by CERT that verify)
import java.io.*;
import java.nio.file.*;
import java.security.*;
import java.security.cert.X509Certificate;
import java.security.interfaces.ECPublicKey;
import java.security.spec.*;
import java.util.*;
import org.bouncycastle.asn1.cms.ContentInfo;
import org.bouncycastle.asn1.cms.CMSObjectIdentifiers;
import org.bouncycastle.asn1.ASN1InputStream;
import org.bouncycastle.asn1.pkcs.PrivateKeyInfo;
import org.bouncycastle.cert.X509CertificateHolder;
import org.bouncycastle.cert.jcajce.JcaCertStore;
import org.bouncycastle.cert.jcajce.JcaX509CertificateConverter;
import org.bouncycastle.cms.*;
import org.bouncycastle.cms.jcajce.*;
import org.bouncycastle.jce.provider.BouncyCastleProvider;
import org.bouncycastle.openssl.PEMParser;
import org.bouncycastle.openssl.jcajce.JcaPEMKeyConverter;
import org.bouncycastle.operator.jcajce.*;
import org.bouncycastle.asn1.x509.AlgorithmIdentifier;
import org.bouncycastle.asn1.pkcs.PKCSObjectIdentifiers;
import org.bouncycastle.asn1.pkcs.RSAESOAEPparams;
import org.bouncycastle.asn1.nist.NISTObjectIdentifiers;
import org.bouncycastle.asn1.DERNull;
import org.bouncycastle.asn1.pkcs.RSASSAPSSparams;

public class CmsPeer {
    static final String BC = "BC";

    static X509Certificate cert(String path) throws Exception {
        try (PEMParser p = new PEMParser(new FileReader(path))) {
            X509CertificateHolder h = (X509CertificateHolder) p.readObject();
            return new JcaX509CertificateConverter().setProvider(BC).getCertificate(h);
        }
    }

    static PrivateKey key(String path) throws Exception {
        try (PEMParser p = new PEMParser(new FileReader(path))) {
            return new JcaPEMKeyConverter().setProvider(BC).getPrivateKey((PrivateKeyInfo) p.readObject());
        }
    }

    static KeyPair ephemeral(PublicKey recipient) throws Exception {
        String alg = recipient.getAlgorithm();
        KeyPairGenerator g;
        if (recipient instanceof ECPublicKey) {
            g = KeyPairGenerator.getInstance("EC", BC);
            g.initialize(((ECPublicKey) recipient).getParams());
        } else {
            g = KeyPairGenerator.getInstance(alg, BC);  // X25519 / X448
        }
        return g.generateKeyPair();
    }

    static void encrypt(String[] a) throws Exception {
        boolean gcm = a[1].equals("gcm");
        boolean oaep = a[2].equals("oaep");
        byte[] data = Files.readAllBytes(Paths.get(a[3]));
        List<RecipientInfoGenerator> infos = new ArrayList<>();
        for (int i = 5; i < a.length; i++) {
            X509Certificate c = cert(a[i]);
            PublicKey pub = c.getPublicKey();
            if (pub.getAlgorithm().equals("RSA")) {
                if (oaep) {
                    AlgorithmIdentifier sha256 = new AlgorithmIdentifier(NISTObjectIdentifiers.id_sha256, DERNull.INSTANCE);
                    AlgorithmIdentifier mgf = new AlgorithmIdentifier(PKCSObjectIdentifiers.id_mgf1, sha256);
                    AlgorithmIdentifier params = new AlgorithmIdentifier(PKCSObjectIdentifiers.id_RSAES_OAEP,
                        new RSAESOAEPparams(sha256, mgf, RSAESOAEPparams.DEFAULT_P_SOURCE_ALGORITHM));
                    infos.add(new JceKeyTransRecipientInfoGenerator(c, params).setProvider(BC));
                } else {
                    infos.add(new JceKeyTransRecipientInfoGenerator(c).setProvider(BC));
                }
            } else {
                KeyPair eph = ephemeral(pub);
                JceKeyAgreeRecipientInfoGenerator g = new JceKeyAgreeRecipientInfoGenerator(
                    CMSAlgorithm.ECDH_SHA256KDF, eph.getPrivate(), eph.getPublic(), CMSAlgorithm.AES128_WRAP);
                g.addRecipient(c);
                g.setProvider(BC);
                infos.add(g);
            }
        }
        byte[] out;
        if (gcm) {
            CMSAuthEnvelopedDataGenerator gen = new CMSAuthEnvelopedDataGenerator();
            for (RecipientInfoGenerator r : infos) gen.addRecipientInfoGenerator(r);
            out = gen.generate(new CMSProcessableByteArray(data),
                (org.bouncycastle.operator.OutputAEADEncryptor)
                new JceCMSContentEncryptorBuilder(CMSAlgorithm.AES128_GCM).setProvider(BC).build()).getEncoded();
        } else {
            CMSEnvelopedDataGenerator gen = new CMSEnvelopedDataGenerator();
            for (RecipientInfoGenerator r : infos) gen.addRecipientInfoGenerator(r);
            out = gen.generate(new CMSProcessableByteArray(data),
                new JceCMSContentEncryptorBuilder(CMSAlgorithm.AES128_CBC).setProvider(BC).build()).getEncoded();
        }
        Files.write(Paths.get(a[4]), out);
    }

    static void decrypt(String[] a) throws Exception {
        byte[] in = Files.readAllBytes(Paths.get(a[1]));
        ContentInfo info = ContentInfo.getInstance(new ASN1InputStream(in).readObject());
        for (int i = 2; i + 2 < a.length; i += 3) {
            X509Certificate c = cert(a[i]);
            PrivateKey k = key(a[i + 1]);
            RecipientInformationStore store = info.getContentType().equals(CMSObjectIdentifiers.authEnvelopedData)
                ? new CMSAuthEnvelopedData(in).getRecipientInfos()
                : new CMSEnvelopedData(in).getRecipientInfos();
            X509CertificateHolder holder = new X509CertificateHolder(c.getEncoded());
            RecipientInformation found = null;
            for (RecipientInformation r : store.getRecipients()) {
                if (r.getRID().match(holder)) { found = r; break; }
            }
            if (found == null) throw new IllegalStateException("not a recipient: " + a[i]);
            Recipient rec = found instanceof KeyTransRecipientInformation
                ? new JceKeyTransEnvelopedRecipient(k).setProvider(BC)
                : new JceKeyAgreeEnvelopedRecipient(k).setProvider(BC);
            Files.write(Paths.get(a[i + 2]), found.getContent(rec));
        }
    }

    static void sign(String[] a) throws Exception {
        String scheme = a[1];
        boolean attached = a[2].equals("attached");
        byte[] data = Files.readAllBytes(Paths.get(a[3]));
        X509Certificate c = cert(a[5]);
        PrivateKey k = key(a[6]);
        String alg = scheme.equals("rsa") ? "SHA256withRSA"
            : scheme.equals("pss") ? "SHA256withRSAandMGF1"
            : scheme.equals("ecdsa") ? "SHA256withECDSA" : "Ed25519";
        CMSSignedDataGenerator gen = new CMSSignedDataGenerator();
        gen.addSignerInfoGenerator(new JcaSignerInfoGeneratorBuilder(
            new JcaDigestCalculatorProviderBuilder().setProvider(BC).build())
            .build(new JcaContentSignerBuilder(alg).setProvider(BC).build(k), c));
        gen.addCertificates(new JcaCertStore(Collections.singletonList(c)));
        CMSSignedData sd = gen.generate(new CMSProcessableByteArray(data), attached);
        Files.write(Paths.get(a[4]), sd.getEncoded());
    }

    static void verify(String[] a) throws Exception {
        for (int t = 1; t + 2 < a.length; t += 3) {
            byte[] sig = Files.readAllBytes(Paths.get(a[t]));
            CMSSignedData sd = a[t + 1].equals("-") ? new CMSSignedData(sig)
                : new CMSSignedData(new CMSProcessableByteArray(Files.readAllBytes(Paths.get(a[t + 1]))), sig);
            X509Certificate c = cert(a[t + 2]);
            int ok = 0;
            for (SignerInformation si : sd.getSignerInfos().getSigners()) {
                if (!si.getSID().match(new X509CertificateHolder(c.getEncoded()))) continue;
                try {
                    if (si.verify(new JcaSimpleSignerInfoVerifierBuilder().setProvider(BC).build(c))) ok++;
                } catch (CMSException e) {
                    System.err.println("signer does not verify: " + e.getMessage());
                }
            }
            System.out.println("verified " + ok);
        }
    }

    public static void main(String[] a) throws Exception {
        Security.addProvider(new BouncyCastleProvider());
        switch (a[0]) {
            case "encrypt": encrypt(a); break;
            case "decrypt": decrypt(a); break;
            case "sign": sign(a); break;
            case "verify": verify(a); break;
            default: throw new IllegalArgumentException(a[0]);
        }
    }
}
