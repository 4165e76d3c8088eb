//! The bridge's topic names (pure): where the host publishes its availability, state and events,
//! where Home Assistant finds the device's discovery payload, which topics carry commands, and the
//! rule that confines a plugin's own topics under `<topic_prefix>/plugins/<id>/`. No I/O; used by
//! the bridge's glue and by the supervisor's relay of plugin `mqtt_*` requests (through
//! [`PluginTopics`]).

/// The first levels under `<topic_prefix>/plugins/<id>/` that the host itself uses: a plugin may
/// neither publish there nor subscribe to them.
pub(crate) const RESERVED_PLUGIN_LEVELS: [&str; 4] = ["state", "set", "restart", "update"];

/// The longest topic (filter) a plugin may give, relative to its own prefix.
pub(crate) const MAX_RELATIVE_TOPIC_LEN: usize = 256;

/// Every topic the bridge uses, from the configured prefixes and the instance id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Topics {
    /// `<topic_prefix>` (default `toru/<instance id>`).
    prefix: String,
    /// Home Assistant's discovery prefix (default `homeassistant`).
    discovery: String,
    /// The device's id in discovery topics and unique ids: `toru_<instance id>`, restricted to
    /// `[a-zA-Z0-9_-]` as Home Assistant asks.
    node_id: String,
}

/// A command received on a command topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Command {
    /// `<prefix>/plugins/<id>/set` with `ON`.
    Enable(String),
    /// `<prefix>/plugins/<id>/set` with `OFF`.
    Disable(String),
    /// `<prefix>/plugins/<id>/restart` (any payload; Home Assistant's button sends `PRESS`).
    Restart(String),
}

/// Why a plugin's topic (or topic filter) is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum TopicError {
    /// Empty, or longer than [`MAX_RELATIVE_TOPIC_LEN`].
    #[error("a topic must be 1 to {MAX_RELATIVE_TOPIC_LEN} bytes")]
    Length,
    /// Starts with `/` (absolute) or `$`, has an empty level, `.`/`..` level or a control
    /// character.
    #[error(
        "a topic is relative to the plugin's own prefix: levels separated by '/', none empty, \
         '.' or '..', no leading '/' or '$', no control characters"
    )]
    Shape,
    /// A wildcard in a topic to publish to, or one that is not a whole level, or `#` not last, or
    /// a wildcard in the first level of a filter (it would reach the host's own topics).
    #[error(
        "wildcards: none when publishing; in a filter '+' and '#' must be whole levels, '#' only \
         the last, and not the first level"
    )]
    Wildcard,
    /// The first level is one the host uses.
    #[error("the first level must not be one the host uses (state, set, restart, update)")]
    Reserved,
}

impl Topics {
    /// Topics for this instance: `prefix` (`None`: `toru/<instance_id>`) and Home Assistant's
    /// `discovery_prefix`.
    pub(crate) fn new(prefix: Option<&str>, discovery_prefix: &str, instance_id: &str) -> Topics {
        let clean: String = instance_id
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        Topics {
            prefix: prefix.map_or_else(|| format!("toru/{clean}"), str::to_string),
            discovery: discovery_prefix.to_string(),
            node_id: format!("toru_{clean}"),
        }
    }

    /// `<topic_prefix>`.
    pub(crate) fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The device's id (discovery topic, unique ids).
    pub(crate) fn node_id(&self) -> &str {
        &self.node_id
    }

    /// `<topic_prefix>/availability`: `online` (retained) while connected, `offline` (the last
    /// will, or a clean stop).
    pub(crate) fn availability(&self) -> String {
        format!("{}/availability", self.prefix)
    }

    /// `<topic_prefix>/host/state`: the host's state (retained JSON).
    pub(crate) fn host_state(&self) -> String {
        format!("{}/host/state", self.prefix)
    }

    /// `<topic_prefix>/events`: every stored event (JSON, not retained).
    pub(crate) fn events(&self) -> String {
        format!("{}/events", self.prefix)
    }

    /// `<topic_prefix>/plugins/<id>/state`: one plugin's state (retained JSON).
    pub(crate) fn plugin_state(&self, id: &str) -> String {
        format!("{}/plugins/{id}/state", self.prefix)
    }

    /// `<topic_prefix>/plugins/<id>/update`: installed and latest version (retained JSON, Home
    /// Assistant's update entity).
    pub(crate) fn plugin_update(&self, id: &str) -> String {
        format!("{}/plugins/{id}/update", self.prefix)
    }

    /// `<topic_prefix>/plugins/<id>/set`: `ON`/`OFF` enables/disables (with `commands = true`).
    pub(crate) fn plugin_set(&self, id: &str) -> String {
        format!("{}/plugins/{id}/set", self.prefix)
    }

    /// `<topic_prefix>/plugins/<id>/restart`: restarts (with `commands = true`).
    pub(crate) fn plugin_restart(&self, id: &str) -> String {
        format!("{}/plugins/{id}/restart", self.prefix)
    }

    /// `<discovery_prefix>/device/<node_id>/config`: the device discovery payload (retained).
    pub(crate) fn discovery_config(&self) -> String {
        format!("{}/device/{}/config", self.discovery, self.node_id)
    }

    /// The filters the bridge subscribes to when commands are on.
    pub(crate) fn command_filters(&self) -> [String; 2] {
        [
            format!("{}/plugins/+/set", self.prefix),
            format!("{}/plugins/+/restart", self.prefix),
        ]
    }

    /// The command `topic` and `payload` carry, if they are one.
    pub(crate) fn parse_command(&self, topic: &str, payload: &[u8]) -> Option<Command> {
        let rest = topic
            .strip_prefix(&self.prefix)?
            .strip_prefix("/plugins/")?;
        let (id, what) = rest.split_once('/')?;
        if !plugin_id_ok(id) {
            return None;
        }
        let payload = std::str::from_utf8(payload).ok()?.trim();
        match what {
            "set" if payload.eq_ignore_ascii_case("on") => Some(Command::Enable(id.to_string())),
            "set" if payload.eq_ignore_ascii_case("off") => Some(Command::Disable(id.to_string())),
            "restart" => Some(Command::Restart(id.to_string())),
            _ => None,
        }
    }

    /// Plugin `id`'s own topics.
    pub(crate) fn plugin(&self, id: &str) -> PluginTopics {
        PluginTopics {
            base: format!("{}/plugins/{id}/", self.prefix),
        }
    }
}

/// One plugin's own part of the topic tree: `<topic_prefix>/plugins/<id>/…`, less the levels the
/// host uses ([`RESERVED_PLUGIN_LEVELS`]). Plugins give topics relative to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PluginTopics {
    /// `<topic_prefix>/plugins/<id>/`.
    base: String,
}

impl PluginTopics {
    /// The absolute topic for `relative`, a topic to publish to (no wildcard).
    pub(crate) fn publish_topic(&self, relative: &str) -> Result<String, TopicError> {
        check_relative(relative, false)?;
        Ok(format!("{}{relative}", self.base))
    }

    /// The absolute filter for `relative`, a filter to subscribe to (`+`, `#` as whole levels,
    /// not in the first level).
    pub(crate) fn subscribe_filter(&self, relative: &str) -> Result<String, TopicError> {
        check_relative(relative, true)?;
        Ok(format!("{}{relative}", self.base))
    }

    /// `topic` relative to this plugin's part, if it lies in it.
    pub(crate) fn relative<'a>(&self, topic: &'a str) -> Option<&'a str> {
        topic.strip_prefix(&self.base)
    }
}

fn check_relative(t: &str, filter: bool) -> Result<(), TopicError> {
    if t.is_empty() || t.len() > MAX_RELATIVE_TOPIC_LEN {
        return Err(TopicError::Length);
    }
    if t.starts_with('/') || t.starts_with('$') || t.chars().any(char::is_control) {
        return Err(TopicError::Shape);
    }
    let levels: Vec<&str> = t.split('/').collect();
    for (i, level) in levels.iter().enumerate() {
        if level.is_empty() || *level == "." || *level == ".." {
            return Err(TopicError::Shape);
        }
        let wild = level.contains('+') || level.contains('#');
        if !wild {
            continue;
        }
        let whole = *level == "+" || (*level == "#" && i == levels.len() - 1);
        if !filter || !whole || i == 0 {
            return Err(TopicError::Wildcard);
        }
    }
    if RESERVED_PLUGIN_LEVELS.contains(&levels[0]) {
        return Err(TopicError::Reserved);
    }
    Ok(())
}

/// Whether `topic` matches the MQTT filter `filter` (`+` one level, `#` the rest).
pub(crate) fn matches(filter: &str, topic: &str) -> bool {
    let mut f = filter.split('/');
    let mut t = topic.split('/');
    loop {
        match (f.next(), t.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// The protocol's plugin id rule (`^[a-z0-9][a-z0-9-]{0,62}$`).
fn plugin_id_ok(id: &str) -> bool {
    (1..=63).contains(&id.len())
        && !id.starts_with('-')
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topics() -> Topics {
        Topics::new(None, "homeassistant", "1b2c-3d")
    }

    #[test]
    fn names_follow_the_prefixes_and_the_instance() {
        let t = topics();
        assert_eq!(t.prefix(), "toru/1b2c-3d");
        assert_eq!(t.availability(), "toru/1b2c-3d/availability");
        assert_eq!(t.plugin_state("s1"), "toru/1b2c-3d/plugins/s1/state");
        assert_eq!(
            t.discovery_config(),
            "homeassistant/device/toru_1b2c-3d/config"
        );
        let own = Topics::new(Some("site/kitchen"), "ha", "x y");
        assert_eq!(own.events(), "site/kitchen/events");
        assert_eq!(own.node_id(), "toru_x_y");
        assert_eq!(own.discovery_config(), "ha/device/toru_x_y/config");
    }

    #[test]
    fn commands_are_read_from_their_topics_only() {
        let t = topics();
        let p = |topic: &str, payload: &str| t.parse_command(topic, payload.as_bytes());
        assert_eq!(
            p("toru/1b2c-3d/plugins/s1/set", "OFF"),
            Some(Command::Disable("s1".into()))
        );
        assert_eq!(
            p("toru/1b2c-3d/plugins/s1/set", "on\n"),
            Some(Command::Enable("s1".into()))
        );
        assert_eq!(
            p("toru/1b2c-3d/plugins/s1/restart", "PRESS"),
            Some(Command::Restart("s1".into()))
        );
        assert_eq!(p("toru/1b2c-3d/plugins/s1/set", "maybe"), None);
        assert_eq!(p("toru/1b2c-3d/plugins/S1/set", "ON"), None);
        assert_eq!(p("toru/other/plugins/s1/set", "ON"), None);
        assert_eq!(p("toru/1b2c-3d/plugins/s1/state", "ON"), None);
        for f in t.command_filters() {
            assert!(matches(&f, "toru/1b2c-3d/plugins/s1/set") || f.ends_with("restart"));
        }
    }

    #[test]
    fn plugin_topics_stay_under_the_plugins_own_prefix() {
        let p = topics().plugin("s1");
        assert_eq!(
            p.publish_topic("temp/kitchen").unwrap(),
            "toru/1b2c-3d/plugins/s1/temp/kitchen"
        );
        assert_eq!(
            p.subscribe_filter("cmd/#").unwrap(),
            "toru/1b2c-3d/plugins/s1/cmd/#"
        );
        assert_eq!(
            p.subscribe_filter("cmd/+/x").unwrap(),
            "toru/1b2c-3d/plugins/s1/cmd/+/x"
        );
        for (bad, err) in [
            ("", TopicError::Length),
            ("/abs", TopicError::Shape),
            ("$SYS/x", TopicError::Shape),
            ("a//b", TopicError::Shape),
            ("../s2/x", TopicError::Shape),
            ("a/./b", TopicError::Shape),
            ("a/\u{0}", TopicError::Shape),
            ("a/#", TopicError::Wildcard),
            ("state", TopicError::Reserved),
            ("set/x", TopicError::Reserved),
        ] {
            assert_eq!(p.publish_topic(bad), Err(err), "{bad:?}");
        }
        for (bad, err) in [
            ("#", TopicError::Wildcard),
            ("+/x", TopicError::Wildcard),
            ("a/#/b", TopicError::Wildcard),
            ("a/b#", TopicError::Wildcard),
            ("a/+b", TopicError::Wildcard),
            ("restart", TopicError::Reserved),
        ] {
            assert_eq!(p.subscribe_filter(bad), Err(err), "{bad:?}");
        }
        assert_eq!(
            p.publish_topic(&"x".repeat(MAX_RELATIVE_TOPIC_LEN + 1)),
            Err(TopicError::Length)
        );
        assert_eq!(p.relative("toru/1b2c-3d/plugins/s1/cmd/go"), Some("cmd/go"));
        assert_eq!(p.relative("toru/1b2c-3d/plugins/s10/cmd/go"), None);
    }

    #[test]
    fn filters_match_as_mqtt_says() {
        assert!(matches("a/+/c", "a/b/c"));
        assert!(!matches("a/+/c", "a/b/d"));
        assert!(matches("a/#", "a/b/c"));
        assert!(matches("a/#", "a"));
        assert!(!matches("a/b", "a/b/c"));
        assert!(!matches("a/b/c", "a/b"));
    }
}
