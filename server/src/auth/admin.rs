//! `gantry user add|remove` and `gantry token create`: managing users and API tokens from the
//! command line, on the store the configuration names.
//!
//! They open the database directly, so they work while the server runs (SQLite in WAL mode lets
//! both write). The functions below are also what the tests use to create users and tokens,
//! exactly as the commands do. A password is read from standard input (one line, so it can be
//! piped); a terminal does not echo it. A new token is printed once, on standard output, and
//! nothing else is, so `TOKEN=$(gantry token create …)` works.

use std::io::{BufRead, Write};
use std::path::PathBuf;

use anyhow::Context;
use secrecy::{ExposeSecret, SecretString};

use super::password::{self, HashError};
use super::{check_password, check_user_name, token, CredentialError, Role};
use crate::config::{Config, Overrides};
use crate::store::{Removed, Store, StoreError, UserRow};

/// The label of a token made by `gantry token create` without `--label`.
pub const DEFAULT_CLI_LABEL: &str = "command line";

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error(transparent)]
    Credential(#[from] CredentialError),
    #[error("a user named {0:?} already exists")]
    UserExists(String),
    #[error("there is no user named {0:?}")]
    NoSuchUser(String),
    #[error("{0}")]
    BadLabel(String),
    #[error(transparent)]
    Hash(#[from] HashError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot read the password from standard input: {0}")]
    Stdin(#[source] std::io::Error),
    #[error("no password on standard input")]
    NoPassword,
}

/// Where the commands find the database: the same configuration `gantry serve` reads.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct StoreArgs {
    /// The configuration file (default: ./gantry.toml when it exists).
    #[arg(long, env = "GANTRY_CONFIG")]
    pub config: Option<PathBuf>,
    /// The data directory, when it is not the configuration's.
    #[arg(long, env = "GANTRY_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
}

#[derive(Debug, clap::Subcommand)]
pub enum UserCommand {
    /// Add a user (a member unless --admin or --read-only); reads the password from stdin.
    Add {
        /// 1 to 64 characters of letters, digits, '.', '_' and '-'.
        name: String,
        /// The user may also manage users and tokens.
        #[arg(long, conflicts_with = "read_only")]
        admin: bool,
        /// The user may only read: no queueing, cancelling or tokens.
        #[arg(long)]
        read_only: bool,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Remove a user: their sessions end and their tokens stop working at once.
    Remove {
        name: String,
        #[command(flatten)]
        store: StoreArgs,
    },
}

#[derive(Debug, clap::Subcommand)]
pub enum TokenCommand {
    /// Create an API token for a user and print it once on stdout.
    Create {
        /// The user the token acts as (with that user's role).
        name: String,
        /// What the token is for, shown on the user's settings page.
        #[arg(long, default_value = DEFAULT_CLI_LABEL)]
        label: String,
        #[command(flatten)]
        store: StoreArgs,
    },
}

/// Add a user with `password`, hashed with argon2id off the async threads.
pub async fn add_user(store: &Store, name: &str, role: Role, password: &SecretString) -> Result<UserRow, AdminError> {
    check_user_name(name)?;
    check_password(password)?;
    if store.user_by_name(name).await?.is_some() {
        return Err(AdminError::UserExists(name.to_string()));
    }
    let password = password.clone();
    let hash = tokio::task::spawn_blocking(move || password::hash_password(&password))
        .await
        .expect("hashing a password does not panic")?;
    store.insert_user(name, &hash, role).await?.ok_or_else(|| AdminError::UserExists(name.to_string()))
}

/// Remove a user with their sessions and tokens.
pub async fn remove_user(store: &Store, name: &str) -> Result<Removed, AdminError> {
    store.delete_user(name).await?.ok_or_else(|| AdminError::NoSuchUser(name.to_string()))
}

/// Create a token for the user `name`; the token is returned once and only its hash is kept.
pub async fn create_token(store: &Store, name: &str, label: &str) -> Result<SecretString, AdminError> {
    token::check_label(label).map_err(AdminError::BadLabel)?;
    let user = store.user_by_name(name).await?.ok_or_else(|| AdminError::NoSuchUser(name.to_string()))?;
    let new = token::generate();
    store.insert_token(user.id, label, &token::hash_secret(&new)).await?;
    Ok(new)
}

/// One line of `input` as a password, without its line ending.
pub fn read_password(input: &mut impl BufRead) -> Result<SecretString, AdminError> {
    let mut line = String::new();
    if input.read_line(&mut line).map_err(AdminError::Stdin)? == 0 {
        return Err(AdminError::NoPassword);
    }
    let password = line.strip_suffix('\n').map(|l| l.strip_suffix('\r').unwrap_or(l)).unwrap_or(&line);
    Ok(SecretString::from(password.to_string()))
}

/// `gantry user …`.
pub async fn run_user(command: UserCommand) -> anyhow::Result<()> {
    match command {
        UserCommand::Add { name, admin, read_only, store } => {
            let role = match (admin, read_only) {
                (true, _) => Role::Admin,
                (false, true) => Role::ReadOnly,
                (false, false) => Role::Member,
            };
            check_user_name(&name)?;
            let password = prompt_password(&name)?;
            let store = open(&store).await?;
            let user = add_user(&store, &name, role, &password).await;
            store.close().await;
            let user = user?;
            eprintln!("gantry: added {} {:?}", user.role.as_str().replace('_', "-"), user.name);
        }
        UserCommand::Remove { name, store } => {
            let store = open(&store).await?;
            let removed = remove_user(&store, &name).await;
            store.close().await;
            let removed = removed?;
            eprintln!(
                "gantry: removed {name:?}; ended {} session(s) and revoked {} token(s)",
                removed.sessions, removed.tokens
            );
        }
    }
    Ok(())
}

/// `gantry token …`.
pub async fn run_token(command: TokenCommand) -> anyhow::Result<()> {
    match command {
        TokenCommand::Create { name, label, store } => {
            let store = open(&store).await?;
            let created = create_token(&store, &name, &label).await;
            store.close().await;
            let token = created?;
            let mut stdout = std::io::stdout().lock();
            writeln!(stdout, "{}", token.expose_secret()).context("cannot write the token")?;
            eprintln!("gantry: a token for {name:?}; it is shown this once: keep it now");
        }
    }
    Ok(())
}

async fn open(args: &StoreArgs) -> anyhow::Result<Store> {
    let overrides = Overrides { config: args.config.clone(), data_dir: args.data_dir.clone(), ..Overrides::default() };
    let config = Config::load(&overrides)?;
    let database = config.database();
    Store::open_location(&database)
        .await
        .with_context(|| format!("failed to open the database {}", database.describe()))
}

/// Read the password from stdin; on a terminal, ask for it and do not echo it.
fn prompt_password(name: &str) -> Result<SecretString, AdminError> {
    let stdin = std::io::stdin();
    let _no_echo = if nix::unistd::isatty(&stdin).unwrap_or(false) {
        eprint!("Password for {name}: ");
        let _ = std::io::stderr().flush();
        NoEcho::start(&stdin)
    } else {
        None
    };
    let password = read_password(&mut stdin.lock());
    if _no_echo.is_some() {
        eprintln!();
    }
    password
}

/// Terminal echo off until dropped.
struct NoEcho {
    saved: nix::sys::termios::Termios,
}

impl NoEcho {
    fn start(stdin: &std::io::Stdin) -> Option<NoEcho> {
        use nix::sys::termios::{tcgetattr, tcsetattr, LocalFlags, SetArg};
        let saved = tcgetattr(stdin).ok()?;
        let mut quiet = saved.clone();
        quiet.local_flags.remove(LocalFlags::ECHO);
        tcsetattr(stdin, SetArg::TCSANOW, &quiet).ok()?;
        Some(NoEcho { saved })
    }
}

impl Drop for NoEcho {
    fn drop(&mut self) {
        use nix::sys::termios::{tcsetattr, SetArg};
        let _ = tcsetattr(std::io::stdin(), SetArg::TCSANOW, &self.saved);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::testing;

    #[test]
    fn the_password_is_one_line_without_its_ending() {
        let read = |input: &str| read_password(&mut input.as_bytes()).map(|p| p.expose_secret().to_string());
        assert_eq!(read("s3cret\n").unwrap(), "s3cret");
        assert_eq!(read("s3cret\r\nsecond line\n").unwrap(), "s3cret");
        assert_eq!(read("no newline").unwrap(), "no newline");
        assert_eq!(read(" spaces kept \n").unwrap(), " spaces kept ");
        assert!(matches!(read(""), Err(AdminError::NoPassword)));
    }

    #[tokio::test]
    async fn users_and_tokens_are_made_and_removed_as_the_commands_do() {
        let (store, _dir) = testing::store().await;
        let password = SecretString::from("hunter2hunter2");
        let alice = add_user(&store, "alice", Role::Admin, &password).await.unwrap();
        assert!(password::verify_password(&password, &alice.password_hash));
        assert!(matches!(add_user(&store, "alice", Role::Member, &password).await, Err(AdminError::UserExists(_))));
        assert!(matches!(
            add_user(&store, "bad name", Role::Member, &password).await,
            Err(AdminError::Credential(CredentialError::NameCharacters))
        ));
        assert!(matches!(
            add_user(&store, "bob", Role::Member, &SecretString::from("")).await,
            Err(AdminError::Credential(CredentialError::EmptyPassword))
        ));

        let token = create_token(&store, "alice", "deploy").await.unwrap();
        let owner = store.token_user(&token::hash_secret(&token)).await.unwrap().unwrap();
        assert_eq!(owner.user.name, "alice");
        assert!(matches!(create_token(&store, "nobody", "x").await, Err(AdminError::NoSuchUser(_))));
        assert!(matches!(create_token(&store, "alice", "").await, Err(AdminError::BadLabel(_))));

        assert_eq!(remove_user(&store, "alice").await.unwrap(), Removed { sessions: 0, tokens: 1 });
        assert!(store.token_user(&token::hash_secret(&token)).await.unwrap().is_none());
        assert!(matches!(remove_user(&store, "alice").await, Err(AdminError::NoSuchUser(_))));
    }
}
