//! Signed approval links. A token is `<expiry, unix seconds>.<hex HMAC-SHA256 of "<id>:<action>:<expiry>">`
//! under `SPENDGATE_APPROVAL_SECRET`: it names its approval and its action, carries its own expiry,
//! and cannot be made without the secret. It works once because an approval is decided once.

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::crypto::{Secret, mac};
use crate::domain::approval::ApprovalAction;

#[derive(Clone)]
pub struct LinkSigner(Vec<u8>);

/// Why a token was refused, in words fit for the person holding the link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenError {
    Malformed,
    /// Not made by this server for this approval and action.
    Forged,
    Expired,
}

impl TokenError {
    pub fn message(self) -> &'static str {
        match self {
            TokenError::Malformed => "This link is incomplete. Open it from the original message.",
            TokenError::Forged => "This link is not valid for this request and action.",
            TokenError::Expired => "This link has expired.",
        }
    }
}

impl LinkSigner {
    pub fn new(secret: &Secret) -> Self {
        LinkSigner(secret.expose().as_bytes().to_vec())
    }

    fn mac(&self, id: &str, action: ApprovalAction, expires: i64) -> Hmac<Sha256> {
        let mut mac = mac(&self.0);
        mac.update(format!("{id}:{}:{expires}", action.as_str()).as_bytes());
        mac
    }

    pub fn sign(&self, id: &str, action: ApprovalAction, expires: i64) -> String {
        format!("{expires}.{}", hex::encode(self.mac(id, action, expires).finalize().into_bytes()))
    }

    /// Checks the token against this approval and action, then its expiry (an expired link that was
    /// never valid is reported as not valid).
    pub fn verify(&self, id: &str, action: ApprovalAction, token: &str, now: i64) -> Result<(), TokenError> {
        let (expires, sig) = token.split_once('.').ok_or(TokenError::Malformed)?;
        let expires: i64 = expires.parse().map_err(|_| TokenError::Malformed)?;
        let sig = hex::decode(sig).map_err(|_| TokenError::Malformed)?;
        // verify_slice compares in constant time.
        self.mac(id, action, expires).verify_slice(&sig).map_err(|_| TokenError::Forged)?;
        if now >= expires {
            return Err(TokenError::Expired);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_works_for_its_approval_and_action_until_it_expires() {
        let signer = LinkSigner::new(&Secret::new("approval-secret-for-tests"));
        let token = signer.sign("apr_1", ApprovalAction::Approve, 2_000);
        assert_eq!(signer.verify("apr_1", ApprovalAction::Approve, &token, 1_999), Ok(()));
        assert_eq!(signer.verify("apr_1", ApprovalAction::Approve, &token, 2_000), Err(TokenError::Expired));
        assert_eq!(signer.verify("apr_1", ApprovalAction::Deny, &token, 1_000), Err(TokenError::Forged));
        assert_eq!(signer.verify("apr_2", ApprovalAction::Approve, &token, 1_000), Err(TokenError::Forged));
        // Moving the expiry breaks the signature.
        let stretched = token.replacen("2000", "9000", 1);
        assert_eq!(signer.verify("apr_1", ApprovalAction::Approve, &stretched, 1_000), Err(TokenError::Forged));
        let other = LinkSigner::new(&Secret::new("another-secret-entirely"));
        assert_eq!(other.verify("apr_1", ApprovalAction::Approve, &token, 1_000), Err(TokenError::Forged));
        for bad in ["", "2000", "abc.def", "2000.zz", "2000."] {
            assert!(signer.verify("apr_1", ApprovalAction::Approve, bad, 1_000).is_err(), "{bad:?}");
        }
    }
}
