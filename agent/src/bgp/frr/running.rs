//! FRR's configuration as a tree of lines, read from `show running-config`
//! and built from the agent's intent alike, so the two compare line by line.
//!
//! FRR prints a context's lines one space deeper than the context (`router
//! bgp …` at 0, ` address-family …` at 1, `  network …` at 2) and closes
//! contexts with `exit`, `exit-vrf`, `exit-address-family` lines and `!`
//! separators, which carry nothing and are dropped here.

/// One configuration line and, for a context, the lines inside it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    pub text: String,
    pub children: Vec<Line>,
}

impl Line {
    pub fn leaf(text: impl Into<String>) -> Line {
        Line {
            text: text.into(),
            children: Vec::new(),
        }
    }

    pub fn context(text: impl Into<String>, children: Vec<Line>) -> Line {
        Line {
            text: text.into(),
            children,
        }
    }

    pub fn child(&self, text: &str) -> Option<&Line> {
        self.children.iter().find(|c| c.text == text)
    }
}

/// The top-level lines of a configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Config {
    pub lines: Vec<Line>,
}

/// Lines that only close a context or separate blocks.
fn is_closing(text: &str) -> bool {
    text == "!"
        || text == "end"
        || text == "exit"
        || text.starts_with("exit-")
        || text == "Building configuration..."
        || text == "Current configuration:"
}

impl Config {
    /// Parses `show running-config` output.
    pub fn parse(text: &str) -> Config {
        // (depth, line) of every meaningful line, then nested by depth.
        let flat: Vec<(usize, &str)> = text
            .lines()
            .map(|raw| {
                let trimmed = raw.trim_start_matches(' ');
                (raw.len() - trimmed.len(), trimmed.trim_end())
            })
            .filter(|(_, text)| !text.is_empty() && !is_closing(text))
            .collect();
        let mut index = 0;
        Config {
            lines: nest(&flat, &mut index, 0),
        }
    }

    pub fn top(&self, text: &str) -> Option<&Line> {
        self.lines.iter().find(|l| l.text == text)
    }

    /// The value of a top-level `frr defaults <profile>` line.
    pub fn defaults_profile(&self) -> Option<&str> {
        self.lines
            .iter()
            .find_map(|l| l.text.strip_prefix("frr defaults "))
    }
}

/// Lines at `depth` (and their deeper children) from `flat[*index..]`,
/// stopping at the first shallower line.
fn nest(flat: &[(usize, &str)], index: &mut usize, depth: usize) -> Vec<Line> {
    let mut lines: Vec<Line> = Vec::new();
    while let Some(&(line_depth, text)) = flat.get(*index) {
        if line_depth < depth {
            break;
        }
        if line_depth > depth {
            // Deeper than a child of the last line: part of it.
            let children = nest(flat, index, line_depth);
            match lines.last_mut() {
                Some(parent) => parent.children.extend(children),
                None => lines.extend(children),
            }
            continue;
        }
        *index += 1;
        lines.push(Line::leaf(text));
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    const RUNNING: &str = "Building configuration...

Current configuration:
!
frr version 8.4.4
frr defaults datacenter
hostname leaf3
!
vrf mm-vrf100
 vni 100
exit-vrf
!
router bgp 4200000003
 bgp router-id 10.255.0.3
 neighbor mm-fabric peer-group
 neighbor swp1 interface peer-group mm-fabric
 !
 address-family ipv4 unicast
  network 10.255.0.3/32
 exit-address-family
 !
 address-family l2vpn evpn
  neighbor mm-fabric activate
  advertise-all-vni
 exit-address-family
exit
!
router bgp 4200000003 vrf mm-vrf100
 !
 address-family ipv4 unicast
  network 10.0.1.11/32
 exit-address-family
exit
!
end
";

    #[test]
    fn running_config_nests_by_indentation() {
        let config = Config::parse(RUNNING);
        assert_eq!(config.defaults_profile(), Some("datacenter"));
        let vrf = config.top("vrf mm-vrf100").unwrap();
        assert_eq!(vrf.children, vec![Line::leaf("vni 100")]);
        let bgp = config.top("router bgp 4200000003").unwrap();
        assert_eq!(bgp.children.len(), 5);
        assert_eq!(
            bgp.child("address-family l2vpn evpn").unwrap().children,
            vec![
                Line::leaf("neighbor mm-fabric activate"),
                Line::leaf("advertise-all-vni")
            ]
        );
        let tenant = config.top("router bgp 4200000003 vrf mm-vrf100").unwrap();
        assert_eq!(
            tenant.children,
            vec![Line::context(
                "address-family ipv4 unicast",
                vec![Line::leaf("network 10.0.1.11/32")]
            )]
        );
        // Closing lines and separators are gone.
        assert!(config.lines.iter().all(|l| !l.text.starts_with("exit")));
        assert!(config.top("end").is_none());
    }

    #[test]
    fn garbage_and_odd_indentation_do_not_panic() {
        for text in ["", "   \n  x\ny", "\u{0}\n \n  \n!", "  a\n b\nc\n   d"] {
            let _ = Config::parse(text);
        }
        let config = Config::parse("  a\n b\nc\n   d");
        assert_eq!(config.lines.len(), 2);
        assert_eq!(config.top("a").unwrap().children, vec![Line::leaf("b")]);
        assert_eq!(config.top("c").unwrap().children, vec![Line::leaf("d")]);
    }
}
