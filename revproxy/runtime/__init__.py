"""The processes: the master and its workers, generations built and swapped on reload,
certificate hot swap, the admin endpoint and stats page, sd_notify, process settings.

Rule of this part: it owns what lives as long as the process does; everything a connection
uses it reaches through the generation it hands to the edge."""
