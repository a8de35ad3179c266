// etcd's contrib/recipes (Go, etcd 3.4's sources from Debian, built in GOPATH mode), for the
// recipes' interop test with Cairn's queue, priority queue, barriers and read-write lock.
// Each command prints a line per step; "hold"-style commands wait for a line on stdin
// before letting go.
//
//	contrib queue-put <endpoint> <name> <value>...
//	contrib queue-take <endpoint> <name> <n>             prints each value taken
//	contrib pqueue-put <endpoint> <name> <priority>:<value>...
//	contrib pqueue-take <endpoint> <name> <n>            prints each value taken
//	contrib barrier-hold <endpoint> <key>                "held", stdin, "released"
//	contrib barrier-wait <endpoint> <key>                "waiting", then "passed"
//	contrib double-barrier <endpoint> <key> <count>      "entered", stdin, "left"
//	contrib rwmutex <endpoint> <name> read|write         "locked", stdin, "unlocked"
package main

import (
	"bufio"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"go.etcd.io/etcd/clientv3"
	"go.etcd.io/etcd/clientv3/concurrency"
	recipe "go.etcd.io/etcd/contrib/recipes"
)

func check(err error) {
	if err != nil {
		fmt.Fprintln(os.Stderr, "error:", err)
		os.Exit(1)
	}
}

func waitLine() {
	_, err := bufio.NewReader(os.Stdin).ReadString('\n')
	check(err)
}

func main() {
	if len(os.Args) < 4 {
		check(fmt.Errorf("usage: contrib <command> <endpoint> <name> ..."))
	}
	cmd, name, rest := os.Args[1], os.Args[3], os.Args[4:]
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{os.Args[2]}, DialTimeout: 5 * time.Second})
	check(err)
	defer cli.Close()
	session := func() *concurrency.Session {
		s, err := concurrency.NewSession(cli, concurrency.WithTTL(10))
		check(err)
		return s
	}
	switch cmd {
	case "queue-put":
		q := recipe.NewQueue(cli, name)
		for _, v := range rest {
			check(q.Enqueue(v))
		}
		fmt.Println("done")
	case "queue-take":
		q := recipe.NewQueue(cli, name)
		n, _ := strconv.Atoi(rest[0])
		for i := 0; i < n; i++ {
			v, err := q.Dequeue()
			check(err)
			fmt.Println(v)
		}
	case "pqueue-put":
		q := recipe.NewPriorityQueue(cli, name)
		for _, pv := range rest {
			parts := strings.SplitN(pv, ":", 2)
			pr, err := strconv.Atoi(parts[0])
			check(err)
			check(q.Enqueue(parts[1], uint16(pr)))
		}
		fmt.Println("done")
	case "pqueue-take":
		q := recipe.NewPriorityQueue(cli, name)
		n, _ := strconv.Atoi(rest[0])
		for i := 0; i < n; i++ {
			v, err := q.Dequeue()
			check(err)
			fmt.Println(v)
		}
	case "barrier-hold":
		b := recipe.NewBarrier(cli, name)
		check(b.Hold())
		fmt.Println("held")
		waitLine()
		check(b.Release())
		fmt.Println("released")
	case "barrier-wait":
		b := recipe.NewBarrier(cli, name)
		fmt.Println("waiting")
		check(b.Wait())
		fmt.Println("passed")
	case "double-barrier":
		count, _ := strconv.Atoi(rest[0])
		b := recipe.NewDoubleBarrier(session(), name, count)
		check(b.Enter())
		fmt.Println("entered")
		waitLine()
		check(b.Leave())
		fmt.Println("left")
	case "rwmutex":
		m := recipe.NewRWMutex(session(), name)
		if rest[0] == "read" {
			check(m.RLock())
		} else {
			check(m.Lock())
		}
		fmt.Println("locked")
		waitLine()
		check(m.Unlock())
		fmt.Println("unlocked")
	default:
		check(fmt.Errorf("unknown command %q", cmd))
	}
}
