// An etcd clientv3 concurrency.NewSTM client, for the recipes' interop test with Cairn's
// stm(): built in GOPATH mode against Debian's golang-etcd-server-dev (etcd 3.4 sources).
//
//	stm transfer <endpoint> <isolation> <transfers> <accounts> <prefix>
//	    moves 3 from account i to i+1 (<prefix>acct/<i>) and adds 1 to <prefix>count in
//	    one STM, <transfers> times; prints "runs R commits N".
//	stm hold <endpoint> <isolation> <key>
//	    reads <key>, prints "read <value>" on its first run and waits for a line on stdin,
//	    then writes <key>/seen; prints "runs R seen <value>".
//	stm put <endpoint> <isolation> <key> <value>
//	    writes <key> = <value> in an STM; prints "done".
package main

import (
	"bufio"
	"fmt"
	"os"
	"strconv"
	"time"

	"go.etcd.io/etcd/clientv3"
	"go.etcd.io/etcd/clientv3/concurrency"
)

func isolation(name string) concurrency.Isolation {
	switch name {
	case "serializable-snapshot":
		return concurrency.SerializableSnapshot
	case "serializable":
		return concurrency.Serializable
	case "repeatable-reads":
		return concurrency.RepeatableReads
	case "read-committed":
		return concurrency.ReadCommitted
	}
	fail(fmt.Errorf("unknown isolation %q", name))
	return 0
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "error:", err)
	os.Exit(1)
}

func number(s concurrency.STM, key string) int {
	n, _ := strconv.Atoi(s.Get(key))
	return n
}

func main() {
	if len(os.Args) < 4 {
		fail(fmt.Errorf("usage: stm transfer|hold|put <endpoint> <isolation> ..."))
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{os.Args[2]}, DialTimeout: 5 * time.Second})
	if err != nil {
		fail(err)
	}
	defer cli.Close()
	iso := concurrency.WithIsolation(isolation(os.Args[3]))
	runs := 0
	switch os.Args[1] {
	case "transfer":
		transfers, _ := strconv.Atoi(os.Args[4])
		accounts, _ := strconv.Atoi(os.Args[5])
		prefix := os.Args[6]
		for t := 0; t < transfers; t++ {
			from := fmt.Sprintf("%sacct/%d", prefix, t%accounts)
			to := fmt.Sprintf("%sacct/%d", prefix, (t+1)%accounts)
			_, err := concurrency.NewSTM(cli, func(s concurrency.STM) error {
				runs++
				f, g, c := number(s, from), number(s, to), number(s, prefix+"count")
				s.Put(from, strconv.Itoa(f-3))
				s.Put(to, strconv.Itoa(g+3))
				s.Put(prefix+"count", strconv.Itoa(c+1))
				return nil
			}, iso)
			if err != nil {
				fail(err)
			}
		}
		fmt.Printf("runs %d commits %d\n", runs, transfers)
	case "hold":
		key := os.Args[4]
		in := bufio.NewReader(os.Stdin)
		seen := ""
		_, err := concurrency.NewSTM(cli, func(s concurrency.STM) error {
			runs++
			seen = s.Get(key)
			if runs == 1 {
				fmt.Printf("read %s\n", seen)
				if _, err := in.ReadString('\n'); err != nil {
					return err
				}
			}
			s.Put(key+"/seen", seen)
			return nil
		}, iso)
		if err != nil {
			fail(err)
		}
		fmt.Printf("runs %d seen %s\n", runs, seen)
	case "put":
		_, err := concurrency.NewSTM(cli, func(s concurrency.STM) error {
			s.Put(os.Args[4], os.Args[5])
			return nil
		}, iso)
		if err != nil {
			fail(err)
		}
		fmt.Println("done")
	default:
		fail(fmt.Errorf("unknown command %q", os.Args[1]))
	}
}
